"""The ``Task``: everything training, evaluation, export and serving need to know about one
screening problem, looked up by name. No other layer special-cases a task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from prescreen.config import get_settings
from prescreen.datasets.collections import LabelledSet
from prescreen.domain import DicomHeader, FileKind, RecordLength
from prescreen.errors import UnknownTaskError

FloatArray = npt.NDArray[np.float32]
#: network inputs (a batch) → class probabilities, one row per input
Classify = Callable[[FloatArray], FloatArray]
#: the fraction of a record analysed so far, 0..1
Progress = Callable[[float], None]


@dataclass(frozen=True)
class RecordAnalysis:
    """What a whole-record analyser (a task with ``analyse``, such as ``holter``) found in one study.

    Attributes:
        score: the record's flag score in [0, 1]; flagged when it reaches the card's threshold.
        label: the reported label, consistent with the flag (the most severe finding, or normal).
        probabilities: the record's class mix (for ``holter``: the share of each beat class).
        summary: a JSON-serialisable summary carried by the finding (beats, heart rate, events).
    """

    score: float
    label: str
    probabilities: dict[str, float]
    summary: dict[str, Any]


#: study (as ``read_files`` made it), the network's classify function, progress callback → analysis
Analyser = Callable[[Any, Classify, Progress | None], RecordAnalysis]


def record_length(duration_s: float | None) -> RecordLength | None:
    """A record's length class: long (ambulatory) from ``PRESCREEN_HOLTER_MIN_SECONDS`` on."""
    if duration_s is None:
        return None
    return RecordLength.LONG if duration_s >= get_settings().holter_min_seconds else RecordLength.SHORT


@dataclass(frozen=True)
class Accepts:
    """What content a task screens, declared in its ``Task`` entry; routing by content and the
    task's own reader both read it, so no other module names a task's modalities.

    Attributes:
        file_kinds: the kinds of file the task reads.
        modalities: DICOM Modality values of the images it screens (empty: any).
        body_parts: Body Part Examined values it screens (``None``: any); a missing body part is
            accepted too.
        sop_classes: SOP Class UIDs it screens (empty: any).
        length: the record length it screens (``None``: any); a record of unknown length counts
            as short.
    """

    file_kinds: tuple[FileKind, ...]
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] | None = None
    sop_classes: tuple[str, ...] = ()
    length: RecordLength | None = None

    def takes(self, kind: FileKind, header: DicomHeader | None = None, duration_s: float | None = None) -> bool:
        """Whether a file of this kind, DICOM header and record duration is one the task screens."""
        if kind not in self.file_kinds:
            return False
        if self.length is not None and (record_length(duration_s) or RecordLength.SHORT) != self.length:
            return False
        if header is None:
            return True
        return not self.refusal(header)

    def refusal(self, header: DicomHeader) -> str | None:
        """Why a DICOM with this header is not one the task screens, or ``None`` when it is."""
        if self.sop_classes and header.sop_class_uid not in self.sop_classes:
            return f"SOP class {header.sop_class_uid or 'missing'}"
        if self.modalities and header.modality not in self.modalities:
            return f"modality {header.modality or 'missing'}"
        if self.body_parts is not None and header.body_part and header.body_part not in self.body_parts:
            return f"body part {header.body_part}"
        return None


@dataclass(frozen=True)
class Task:
    """A screening task.

    Attributes:
        name: the task's name (``ecg-rhythm``).
        classes: class names in the order of the network's outputs.
        normal_classes: classes that are *not* flagged; every other class is.
        input_spec: what the network takes (rate, length, lead, normalisation), for the card.
        default_data: folder name under ``PRESCREEN_DATA_DIR`` used when ``--data`` is absent.
        accepts: what content the task screens (routing by content reads it).
        read_files: uploaded files → study object (raises ``InvalidStudyError``).
        preprocess: study → full-length model-input signal.
        windows: model-input signal → batch of network inputs; outputs are averaged.
        train_view: model-input signal + rng → one (augmented) network input for training.
        build_network: makes an untrained network.
        load_dataset: (path, cache dir, progress, purpose ``"train"``/``"eval"``) → ``LabelledSet``
            (raises ``DatasetError``).
        train_defaults: default hyper-parameters of ``prescreen train``.
        analyse: for a task that judges a whole record rather than averaging windows (``holter``):
            study + the network's classify function + progress → :class:`RecordAnalysis`. Such a
            task is trained and evaluated by its own modules, not the generic window trainer.
    """

    name: str
    classes: tuple[str, ...]
    normal_classes: tuple[str, ...]
    input_spec: dict[str, Any]
    default_data: str
    accepts: Accepts
    read_files: Callable[[Mapping[str, bytes]], Any]
    preprocess: Callable[[Any], FloatArray]
    windows: Callable[[FloatArray], FloatArray]
    train_view: Callable[[FloatArray, np.random.Generator], FloatArray]
    build_network: Callable[[], nn.Module]
    load_dataset: Callable[[Path, Path | None, bool, str], LabelledSet]
    train_defaults: dict[str, Any] = field(default_factory=dict)
    caveats: tuple[str, ...] = ()
    f1_unscored: tuple[str, ...] = ()
    analyse: Analyser | None = None

    @property
    def flag_rule(self) -> str:
        normal = " or ".join(self.normal_classes)
        return f"flagged when the score 1 - P({normal}) reaches the operating threshold"

    @property
    def normal_index(self) -> list[int]:
        return [self.classes.index(c) for c in self.normal_classes]

    def flag_scores(self, probs: FloatArray) -> FloatArray:
        """Flag score per row of class probabilities: 1 - P(normal classes)."""
        scores: FloatArray = (1.0 - probs[:, self.normal_index].sum(axis=1)).astype(np.float32)
        return scores

    def predict_by_windows(
        self, signals: list[FloatArray], predict_windows: Callable[[FloatArray], FloatArray], batch: int = 256
    ) -> FloatArray:
        """Class probabilities per preprocessed signal: its windows (ECG segments, image frames)
        go through ``predict_windows`` in batches and their probabilities are averaged."""
        windows = [self.windows(s) for s in signals]
        owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(windows)])
        flat = np.concatenate(windows)
        out = np.concatenate([predict_windows(flat[i : i + batch]) for i in range(0, len(flat), batch)])
        probs = np.zeros((len(signals), len(self.classes)), dtype=np.float64)
        np.add.at(probs, owner, out)
        probs /= np.bincount(owner, minlength=len(signals))[:, None]
        result: FloatArray = probs.astype(np.float32)
        return result

    def label_for(self, probs: npt.NDArray[Any], flagged: bool) -> str:
        """The reported label, consistent with the flag: the most likely class on its side."""
        side = [i for i, c in enumerate(self.classes) if (c in self.normal_classes) != flagged]
        return self.classes[max(side, key=lambda i: float(probs[i]))]


_REGISTRY: dict[str, Callable[[], Task]] = {}
_MADE: dict[str, tuple[Callable[[], Task], Task]] = {}  # a task is frozen: made once per factory


def register(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Register a task factory under ``name``."""

    def deco(factory: Callable[[], Task]) -> Callable[[], Task]:
        _REGISTRY[name] = factory
        return factory

    return deco


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """Look a task up by name.

    Raises:
        UnknownTaskError: no task of that name.
    """
    _load_builtin_tasks()
    if name not in _REGISTRY:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    made = _MADE.get(name)
    if made is None or made[0] is not factory:  # first use, or registered anew since
        made = (factory, factory())
        _MADE[name] = made
    return made[1]


def unregister(name: str) -> None:
    """Remove a registered task (tests that register a toy task clean up with it)."""
    _REGISTRY.pop(name, None)
    _MADE.pop(name, None)


def _load_builtin_tasks() -> None:
    from prescreen.models import ecg_rhythm, holter, imaging  # noqa: F401  (register themselves)
