"""Evaluation of the ``holter`` task per AAMI EC57, on annotated records (MIT-BIH style).

- QRS detection: sensitivity and PPV of the detected beats against the reference beats (``.atr``),
  matched one-to-one within ±150 ms; ventricular flutter episodes (``[`` to ``]``) are left out of the
  beat-by-beat comparison, as EC57 does. Paced records are excluded.
- Beat classification: gross statistics over all matched beats (accuracy, sensitivity and PPV of
  N, S, V, F), and the 5×5 confusion matrix (rows reference N S V F Q, columns predicted).
- Events: V runs (≥ 3 V), pauses (RR > 2 s) and AF episodes found vs derived from the reference in
  the same way (AF from the ``(AFIB`` rhythm notes); an event is found when the two overlap (±1 s).
- The record flag: the flag rule on the analysis vs the same rule on the reference annotations.

Every figure comes with a 95 % percentile-bootstrap CI in which *records* are resampled (beats of one
record are not independent), and gross statistics are recomputed on each resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prescreen.datasets.collections import digest_files
from prescreen.datasets.holter import (
    BEAT_CLASSES,
    PACED_RECORDS,
    BeatClass,
    HolterRecord,
    Reference,
    aami_records,
    read_reference,
    record_files,
)
from prescreen.errors import DatasetError
from prescreen.evaluation.metrics import bootstrap_ci
from prescreen.models.holter import HolterResult, analyse_holter
from prescreen.models.holter_events import V_RUN_KINDS, BeatSequence, Event, EventKind, HolterSummary, summarise
from prescreen.models.task import Classify

IntArray = npt.NDArray[np.int64]

TOLERANCE_S = 0.15
EVENT_TOLERANCE_S = 1.0
N_CLASSES = len(BEAT_CLASSES)
SCORED = ("N", "S", "V", "F")
EVENT_GROUPS: dict[str, tuple[EventKind, ...]] = {
    "v_run": V_RUN_KINDS,
    "pause": (EventKind.PAUSE,),
    "af": (EventKind.AF,),
}
METRICS = (
    "accuracy",
    "qrs_sensitivity",
    "qrs_ppv",
    *(f"{m}_{c}" for c in SCORED for m in ("sensitivity", "ppv")),
    *(f"{g}_{m}" for g in EVENT_GROUPS for m in ("sensitivity", "ppv")),
    "flag_accuracy",
)
GOALS: dict[str, float] = {
    "accuracy": 0.96,
    "sensitivity_V": 0.90,
    "sensitivity_S": 0.70,
    "qrs_sensitivity": 0.995,
    "qrs_ppv": 0.995,
}
TARGET = ("accuracy", 0.96)
CI_TEXT = "95 % percentile bootstrap, records resampled with replacement, gross statistics recomputed"


# --------------------------------------------------------------------------- matching


def match_beats(reference: IntArray, detected: IntArray, tolerance: int) -> tuple[IntArray, IntArray]:
    """Match detected to reference beats one-to-one, closest pairs first, within ``tolerance`` samples.

    Args:
        reference: reference beat samples.
        detected: detected beat samples.
        tolerance: the largest distance of a match, in samples.

    Returns:
        the indices of the matched reference beats and of their detected beats (same length, in
        reference order).
    """
    ref = np.asarray(reference, dtype=np.int64)
    det = np.asarray(detected, dtype=np.int64)
    order = np.argsort(det, kind="stable")
    sorted_det = det[order]
    lo = np.searchsorted(sorted_det, ref - tolerance, side="left")
    hi = np.searchsorted(sorted_det, ref + tolerance, side="right")
    pairs = [(abs(int(sorted_det[j]) - int(r)), i, j) for i, r in enumerate(ref.tolist()) for j in range(lo[i], hi[i])]
    pairs.sort()
    used_ref: set[int] = set()
    used_det: set[int] = set()
    matched: list[tuple[int, int]] = []
    for _, i, j in pairs:
        if i not in used_ref and j not in used_det:
            used_ref.add(i)
            used_det.add(j)
            matched.append((i, int(order[j])))
    matched.sort()
    ref_idx = np.array([m[0] for m in matched], dtype=np.int64)
    det_idx = np.array([m[1] for m in matched], dtype=np.int64)
    return ref_idx, det_idx


def outside(samples: IntArray, spans: Sequence[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    """Whether each sample lies outside every (start, stop) span."""
    keep = np.ones(len(samples), dtype=bool)
    for lo, hi in spans:
        keep &= ~((samples >= lo) & (samples < hi))
    return keep


def events_overlap(a: Event, b: Event, tolerance: float = EVENT_TOLERANCE_S) -> bool:
    """Whether two events overlap in time, within ``tolerance`` seconds."""
    return a.start_s <= b.end_s + tolerance and a.end_s >= b.start_s - tolerance


def event_counts(reference: list[Event], found: list[Event]) -> tuple[int, int, int, int]:
    """(reference events, those found, found events, those true) for one kind of event."""
    ref_hit = sum(1 for r in reference if any(events_overlap(r, f) for f in found))
    found_true = sum(1 for f in found if any(events_overlap(f, r) for r in reference))
    return len(reference), ref_hit, len(found), found_true


# --------------------------------------------------------------------------- per record


def reference_summary(reference: Reference) -> HolterSummary:
    """Events, verdict and summary derived from the reference annotations as from an analysis: AF from
    the ``(AFIB`` notes; no pause across ventricular flutter (its waves are no beats) or a noise mark
    (``~``: beats there were not annotated), which count as not analysable."""
    fs = reference.fs
    unreadable = [(a / fs, b / fs) for a, b in (*reference.excluded, *reference.noise)]
    seq = BeatSequence(reference.beat_samples / fs, reference.beat_classes, reference.n_samples / fs, unreadable)
    return summarise(seq, fs=fs, spans=reference.rhythm_spans("AFIB"))


@dataclass(frozen=True)
class RecordOutcome:
    """What one record contributes to the gross statistics.

    Attributes:
        record: its name.
        n_ref: reference beats compared (outside flutter episodes).
        n_det: detected beats compared.
        matched: matched pairs.
        confusion: 5×5 counts of matched beats, rows reference, columns predicted.
        events: per event group, (reference, reference found, found, found true).
        flag_ref: the flag rule on the reference.
        flag_pred: the flag of the analysis.
    """

    record: str
    n_ref: int
    n_det: int
    matched: int
    confusion: IntArray
    events: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    flag_ref: bool = False
    flag_pred: bool = False


def record_outcome(reference: Reference, detected: IntArray, classes: IntArray, found: HolterSummary) -> RecordOutcome:
    """Compare one record's analysis (beat samples, classes, events, verdict) with its reference."""
    ref_keep = outside(reference.beat_samples, reference.excluded)
    det_keep = outside(np.asarray(detected, dtype=np.int64), reference.excluded)
    ref_samples, ref_classes = reference.beat_samples[ref_keep], reference.beat_classes[ref_keep]
    det_samples, det_classes = np.asarray(detected)[det_keep], np.asarray(classes)[det_keep]
    ref_idx, det_idx = match_beats(ref_samples, det_samples, round(TOLERANCE_S * reference.fs))
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(confusion, (ref_classes[ref_idx], det_classes[det_idx]), 1)
    expected = reference_summary(reference)
    events = {
        group: event_counts(
            [e for e in expected.events if e.kind in kinds], [e for e in found.events if e.kind in kinds]
        )
        for group, kinds in EVENT_GROUPS.items()
    }
    return RecordOutcome(
        record=reference.record,
        n_ref=len(ref_samples),
        n_det=len(det_samples),
        matched=len(ref_idx),
        confusion=confusion,
        events=events,
        flag_ref=expected.verdict.flagged,
        flag_pred=found.verdict.flagged,
    )


# --------------------------------------------------------------------------- gross statistics


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def gross(outcomes: Sequence[RecordOutcome]) -> dict[str, float]:
    """Gross statistics over records (NaN where a denominator is 0)."""
    cm = np.sum([o.confusion for o in outcomes], axis=0) if outcomes else np.zeros((N_CLASSES, N_CLASSES))
    out = {
        "accuracy": _ratio(float(np.trace(cm)), float(cm.sum())),
        "qrs_sensitivity": _ratio(sum(o.matched for o in outcomes), sum(o.n_ref for o in outcomes)),
        "qrs_ppv": _ratio(sum(o.matched for o in outcomes), sum(o.n_det for o in outcomes)),
    }
    for c in SCORED:
        k = BEAT_CLASSES.index(BeatClass(c))
        out[f"sensitivity_{c}"] = _ratio(float(cm[k, k]), float(cm[k].sum()))
        out[f"ppv_{c}"] = _ratio(float(cm[k, k]), float(cm[:, k].sum()))
    for group in EVENT_GROUPS:
        totals = np.sum([o.events.get(group, (0, 0, 0, 0)) for o in outcomes], axis=0) if outcomes else np.zeros(4)
        out[f"{group}_sensitivity"] = _ratio(float(totals[1]), float(totals[0]))
        out[f"{group}_ppv"] = _ratio(float(totals[3]), float(totals[2]))
    out["flag_accuracy"] = _ratio(sum(o.flag_ref == o.flag_pred for o in outcomes), len(outcomes))
    return out


def _finite(x: float) -> float | None:
    return round(float(x), 6) if np.isfinite(x) else None


def metrics_with_ci(outcomes: Sequence[RecordOutcome], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every metric of :data:`METRICS` as ``{"value", "ci_low", "ci_high"}``, CIs by resampling records.

    The interval always holds the value (a percentile interval of a skewed statistic may not; it is
    widened to it), and every part is ``None`` where the metric is undefined.

    Raises:
        ValueError: no outcome.
    """
    if not outcomes:
        raise ValueError("no record to evaluate")
    values = gross(outcomes)
    items = list(outcomes)
    cis = bootstrap_ci(lambda idx: gross([items[i] for i in idx]), len(items), resamples, seed)
    out: dict[str, Any] = {}
    for key in METRICS:
        value = _finite(values[key])
        low, high = cis.get(key, (float("nan"), float("nan")))
        if value is None:
            out[key] = {"value": None, "ci_low": None, "ci_high": None}
            continue
        low_v, high_v = _finite(low), _finite(high)
        out[key] = {
            "value": value,
            "ci_low": min(value, low_v if low_v is not None else value),
            "ci_high": max(value, high_v if high_v is not None else value),
        }
    return out


def per_record_row(o: RecordOutcome) -> dict[str, Any]:
    """One row of the per-record table."""
    v, s = BEAT_CLASSES.index(BeatClass.V), BEAT_CLASSES.index(BeatClass.S)
    return {
        "record": o.record,
        "beats": o.n_ref,
        "accuracy": _finite(_ratio(float(np.trace(o.confusion)), float(o.confusion.sum()))),
        "qrs_sensitivity": _finite(_ratio(o.matched, o.n_ref)),
        "qrs_ppv": _finite(_ratio(o.matched, o.n_det)),
        "V_sens": _finite(_ratio(float(o.confusion[v, v]), float(o.confusion[v].sum()))),
        "S_sens": _finite(_ratio(float(o.confusion[s, s]), float(o.confusion[s].sum()))),
        "flag_ref": o.flag_ref,
        "flag_pred": o.flag_pred,
    }


def goal_verdicts(metrics: dict[str, Any]) -> dict[str, Any]:
    """Whether each goal of the issue is met by its point value (and by its CI's lower bound)."""
    out: dict[str, Any] = {}
    for key, threshold in GOALS.items():
        value, low = metrics[key]["value"], metrics[key]["ci_low"]
        out[key] = {
            "threshold": threshold,
            "value": value,
            "met": bool(value is not None and value >= threshold),
            "met_by_ci_low": bool(low is not None and low >= threshold),
        }
    return out


def outcomes_document(
    outcomes: Sequence[RecordOutcome], dataset: dict[str, Any], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The evaluation document of a set of record outcomes (see :func:`evaluate_holter`)."""
    metrics = metrics_with_ci(outcomes, resamples, seed)
    confusion = np.sum([o.confusion for o in outcomes], axis=0)
    target_value = metrics[TARGET[0]]["value"]
    return {
        "task": "holter",
        "model": {},
        "dataset": dataset,
        "metrics": metrics,
        "confusion": [[int(v) for v in row] for row in confusion],
        "classes": [c.value for c in BEAT_CLASSES],
        "per_record": [per_record_row(o) for o in outcomes],
        "target": {
            "metric": TARGET[0],
            "threshold": TARGET[1],
            "met": bool(target_value is not None and target_value >= TARGET[1]),
        },
        "goals": goal_verdicts(metrics),
        "ci": CI_TEXT,
        "tolerance_s": TOLERANCE_S,
    }


# --------------------------------------------------------------------------- a folder


def evaluation_records(folder: Path) -> tuple[list[Path], list[str]]:
    """The records of a folder to evaluate, and the names excluded as paced.

    Raises:
        DatasetError: no record, or a record without ``.atr`` (named).
    """
    records = aami_records(folder)
    excluded = sorted(set(PACED_RECORDS))
    chosen = []
    for path in records:
        if not path.with_suffix(".atr").is_file():
            raise DatasetError(
                f"record {path.name} in {folder} has no reference annotations ({path.name}.atr); "
                "evaluation needs a .atr file beside every record"
            )
        chosen.append(path)
    return chosen, excluded


def evaluate_record(
    path: Path, classify: Classify, reference: Reference | None = None
) -> tuple[RecordOutcome, HolterResult]:
    """Analyse one annotated record and compare it with its reference.

    Raises:
        DatasetError: the annotations cannot be read.
    """
    reference = reference or read_reference(path)
    with HolterRecord.from_path(path) as record:
        result = analyse_holter(record, classify)
    outcome = record_outcome(reference, result.beats.samples, result.classes, result.found)
    return outcome, result


def evaluate_holter(
    folder: Path, classify: Classify, *, resamples: int = 1000, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Evaluate the whole analysis on every annotated, unpaced record of a folder.

    Args:
        folder: WFDB records with ``.atr`` annotations (MIT-BIH layout).
        classify: the beat network (network inputs → class probabilities).
        resamples: bootstrap resamples (records drawn with replacement).
        seed: the bootstrap's seed.
        progress: show a progress bar.

    Returns:
        the evaluation document: task, model (left empty for the caller), dataset, metrics with CIs,
        confusion, per-record table, target and goals.

    Raises:
        DatasetError: a missing folder, no records, a record without ``.atr`` (named), or a paced record.
    """
    paths, excluded = evaluation_records(folder)
    outcomes: list[RecordOutcome] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("holter records", total=len(paths))
        for path in paths:
            reference = read_reference(path)
            if reference.paced:
                excluded.append(path.name)
                bar.advance(job)
                continue
            outcomes.append(evaluate_record(path, classify, reference)[0])
            bar.advance(job)
    if not outcomes:
        raise DatasetError(f"{folder} holds no unpaced annotated record to evaluate")
    used = [folder / o.record for o in outcomes]
    dataset = {
        "path": str(folder),
        "n": len(outcomes),
        "beats": sum(o.n_ref for o in outcomes),
        "digest": digest_files([f for p in used for f in record_files(p)]),
        "excluded": sorted(set(excluded)),
    }
    return outcomes_document(outcomes, dataset, resamples, seed)


# --------------------------------------------------------------------------- report


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def confusion_png(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """Draw the confusion matrix (counts, rows normalised in colour) as a PNG."""
    cm = np.asarray(confusion, dtype=np.float64)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="black" if shares[i, j] < 0.6 else "w")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title("Beat classes (matched beats)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_holter_report(folder: Path, doc: dict[str, Any]) -> Path:
    """Write ``report.md`` (metrics with CIs, goals, confusion matrix, per-record table) and
    ``confusion.png`` into ``folder``.

    Returns:
        the path of ``report.md``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    classes = list(doc.get("classes") or [c.value for c in BEAT_CLASSES])
    png = confusion_png(doc["confusion"], classes, folder / "confusion.png")
    ds = doc["dataset"]
    lines = [
        "# Holter evaluation",
        "",
        f"Data: `{ds['path']}`: {ds['n']} records, {ds['beats']} reference beats "
        f"(excluded as paced: {', '.join(ds.get('excluded') or []) or 'none'}); digest `{ds['digest'][:16]}`.",
        f"Confidence intervals: {doc.get('ci', CI_TEXT)}.",
        "",
        "| metric | value | 95 % CI |",
        "| --- | --- | --- |",
    ]
    for key, m in doc["metrics"].items():
        lines.append(f"| {key} | {_fmt(m['value'])} | {_fmt(m['ci_low'])} - {_fmt(m['ci_high'])} |")
    lines += ["", "## Goals", "", "| goal | threshold | value | met |", "| --- | --- | --- | --- |"]
    for key, g in doc["goals"].items():
        lines.append(f"| {key} | {g['threshold']} | {_fmt(g['value'])} | {_fmt(g['met'])} |")
    lines += ["", "## Confusion matrix (rows reference, columns predicted)", "", f"![confusion]({png.name})", ""]
    lines += ["| | " + " | ".join(classes) + " |", "| --- " * (len(classes) + 1) + "|"]
    lines += [
        f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, doc["confusion"], strict=True)
    ]
    keys = ["record", "beats", "accuracy", "qrs_sensitivity", "qrs_ppv", "V_sens", "S_sens", "flag_ref", "flag_pred"]
    lines += ["", "## Per record", "", "| " + " | ".join(keys) + " |", "| --- " * len(keys) + "|"]
    lines += ["| " + " | ".join(_fmt(row[k]) for k in keys) + " |" for row in doc["per_record"]]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
