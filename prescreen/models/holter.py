"""The ``holter`` task: a pre-read of a long ambulatory ECG.

Every beat is found (GQRS) and classified into the AAMI classes N, S, V, F, Q by a small network on its
morphology and RR context; events (V and S runs, pauses, AF), the summary and the flag rule follow from
the beat sequence (:mod:`prescreen.models.holter_events`). The record is read and analysed chunk by
chunk; the generic window pipeline (``preprocess``, ``windows``, ``train_view``, ``load_dataset``) does
not apply: the task is trained by ``prescreen train holter`` (:mod:`prescreen.training.holter`) and
evaluated by :mod:`prescreen.evaluation.holter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.files import ECG_SOP_CLASSES
from prescreen.datasets.holter import BEAT_CLASSES, HolterRecord, read_holter_files
from prescreen.domain import FileKind, RecordLength
from prescreen.errors import DatasetError, InvalidStudyError, ModelError, NotAssessableError
from prescreen.models.holter_beats import INPUT_SPEC, ExtractedBeats, extract_beats
from prescreen.models.holter_events import BeatSequence, HolterSummary, relabel_in_af, summarise
from prescreen.models.holter_network import HolterBeatNet
from prescreen.models.task import Accepts, Classify, FloatArray, Progress, RecordAnalysis, Task, register

CLASSES: tuple[str, ...] = tuple(c.value for c in BEAT_CLASSES)
MIN_ANALYSED_S = 60.0
MIN_BEATS = 10
BATCH = 1024
DETECTION_SHARE = 0.9
"""The part of the progress that beat detection takes; classification the rest."""
CAVEATS = (
    "Trained only on the DS1 half of the MIT-BIH Arrhythmia Database inter-patient split (22 records, 30 min "
    "each): 48 records of 47 patients recorded 1975-79 in Boston on analogue Holter tape; few patients, one "
    "population, old equipment. Paced records (102, 104, 107, 217) are excluded: paced rhythms are not classified.",
    "Figures are out-of-fold by record (5-fold cross-validation on DS1, no patient in two folds); they are no "
    "measurement on a new population, and S and F beats come from few patients, so their figures vary widely.",
    "F (fusion) and Q (unclassifiable) beats are rare in the training data; the network seldom predicts them.",
    "AF is detected from RR irregularity only (no P-wave analysis); atrial flutter with regular conduction is not "
    "AF here, and frequent irregular ectopy can mimic AF. AF episodes shorter than 30 s are not reported.",
    "Beats are detected and classified on the primary lead (MLII / II, else the first); a second lead only tells "
    "a pause from beats the primary lead lost. Stretches where the primary lead is flat, saturated or lost are "
    "not analysable and reported as such, even when another lead is good.",
    "A pre-read for triage: every flagged record and every event needs a cardiologist's reading.",
)


def _generic(name: str) -> Any:
    def refuse(*_: object) -> NoReturn:
        raise ModelError(
            f"the holter task has no '{name}' step: it analyses whole records (analyse_record) and is trained with "
            "its own path (`prescreen train holter`, prescreen.training.holter.train_holter)"
        )

    return refuse


def _no_dataset(*_: object) -> NoReturn:
    raise DatasetError(
        "the holter task does not load a generic labelled set: it is trained with its own path "
        "(`prescreen train holter`, prescreen.training.holter.train_holter) from MIT-BIH-style records"
    )


def classify_beats(beats: ExtractedBeats, classify: Classify, batch: int = BATCH) -> FloatArray:
    """Class probabilities ``(n, 5)`` of every beat, ``batch`` inputs at a time."""
    if len(beats) == 0:
        return np.zeros((0, len(CLASSES)), dtype=np.float32)
    out = [np.asarray(classify(x), dtype=np.float32) for x in beats.batches(batch)]
    probs = np.concatenate(out)
    if probs.shape != (len(beats), len(CLASSES)):
        raise ModelError(f"the beat classifier returned {probs.shape}; expected ({len(beats)}, {len(CLASSES)})")
    return probs


def sequence(beats: ExtractedBeats, classes: np.ndarray[Any, np.dtype[np.int64]]) -> BeatSequence:
    """The beat sequence of extracted beats and their classes."""
    return BeatSequence(beats.times_s, np.asarray(classes, dtype=np.int64), beats.duration_s, tuple(beats.excluded))


def findings(
    beats: ExtractedBeats, classes: np.ndarray[Any, np.dtype[np.int64]], known_af: bool = False
) -> HolterSummary:
    """Events, verdict and summary of extracted beats with their classes."""
    return summarise(sequence(beats, classes), lead=beats.lead, fs=beats.fs, known_af=known_af)


def decide(
    beats: ExtractedBeats, probs: FloatArray, known_af: bool = False
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], HolterSummary]:
    """Beat classes (the most likely class; S beats inside AF episodes made N) and the findings."""
    classes = relabel_in_af(sequence(beats, np.argmax(probs, axis=1).astype(np.int64)))
    return classes, findings(beats, classes, known_af)


@dataclass(frozen=True)
class HolterResult:
    """Everything one analysis found: the beats, their probabilities and classes, events and summary."""

    beats: ExtractedBeats
    probabilities: FloatArray
    classes: np.ndarray[Any, np.dtype[np.int64]]
    found: HolterSummary


def _check_assessable(beats: ExtractedBeats) -> None:
    analysed = beats.duration_s - beats.not_analysable_s
    if analysed < MIN_ANALYSED_S:
        raise NotAssessableError(
            f"not assessable: only {analysed:.0f} s of {beats.duration_s / 60:.1f} min can be analysed (the "
            f"{beats.lead} lead is flat or saturated); at least {MIN_ANALYSED_S:.0f} s are needed"
        )
    if len(beats) < MIN_BEATS:
        raise NotAssessableError(
            f"not assessable: {len(beats)} QRS complexes found in {analysed / 60:.1f} analysable min of lead "
            f"{beats.lead}; at least {MIN_BEATS} are needed"
        )


def as_holter(study: Any) -> HolterRecord:
    """The study as a :class:`HolterRecord` (an :class:`EcgRecord` is wrapped whole).

    Raises:
        InvalidStudyError: anything else.
    """
    if isinstance(study, HolterRecord):
        return study
    if isinstance(study, EcgRecord):
        return HolterRecord.from_ecg(study)
    raise InvalidStudyError(f"the holter task analyses an ambulatory ECG record, not a {type(study).__name__}")


def analyse_holter(
    study: Any, classify: Classify, progress: Progress | None = None, *, known_af: bool = False
) -> HolterResult:
    """Detect, classify and summarise every beat of a long record, chunk by chunk.

    Args:
        study: a :class:`HolterRecord` (or an :class:`EcgRecord`).
        classify: network inputs ``(batch, 3, 128)`` → class probabilities ``(batch, 5)``.
        progress: called with the fraction analysed after each chunk, and 1.0 at the end.
        known_af: the patient is known to have AF (AF is then reported but not flagged).

    Raises:
        NotAssessableError: less than a minute analysable, or almost no QRS complex found.
        InvalidStudyError: samples that cannot be decoded.
    """
    record = as_holter(study)
    beats = extract_beats(record, progress, DETECTION_SHARE)
    _check_assessable(beats)
    probs = classify_beats(beats, classify)
    classes, found = decide(beats, probs, known_af)
    if progress is not None:
        progress(1.0)
    return HolterResult(beats, probs, classes, found)


def analyse_record(
    study: Any, classify: Classify, progress: Progress | None = None, *, known_af: bool = False
) -> RecordAnalysis:
    """The ``holter`` task's analyser: score, label, beat-class shares and summary of a record.

    The score is the graded severity ``min(1, max over the rule's parts of value / limit)``; it reaches 1.0
    exactly when the flag rule is met, and the label is then the most severe finding (``nsvt``,
    ``pause``, ``af``, ``v-burden``), else ``normal``. See :func:`analyse_holter` for the arguments.
    """
    result = analyse_holter(study, classify, progress, known_af=known_af)
    n = max(1, len(result.classes))
    shares = np.bincount(result.classes, minlength=len(CLASSES)) / n
    verdict = result.found.verdict
    return RecordAnalysis(
        score=round(float(verdict.score), 6),
        label=verdict.label.value,
        probabilities={c: round(float(p), 6) for c, p in zip(CLASSES, shares, strict=True)},
        summary=result.found.summary,
    )


@register("holter")
def holter() -> Task:
    return Task(
        name="holter",
        classes=CLASSES,
        normal_classes=("N",),
        input_spec=INPUT_SPEC,
        default_data="mitdb",
        accepts=Accepts(
            (FileKind.WFDB, FileKind.DICOM_WAVEFORM), sop_classes=tuple(ECG_SOP_CLASSES), length=RecordLength.LONG
        ),
        read_files=read_holter_files,
        preprocess=_generic("preprocess"),
        windows=_generic("windows"),
        train_view=_generic("train_view"),
        build_network=HolterBeatNet,
        load_dataset=_no_dataset,
        caveats=CAVEATS,
        f1_unscored=("Q",),
        analyse=analyse_record,
    )
