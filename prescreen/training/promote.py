"""The promotion gate: a candidate replaces the active model only if it is non-inferior on the same
records and its card is complete; a rollback (``models activate``) only to a model that was active.

:func:`assess_promotion` measures (both models on the same records, paired bootstrap, card check);
:func:`promote` records the decision through a callback (the CLI writes it to the database) and
activates the candidate on a pass. The decisions themselves are plain functions in
:mod:`prescreen.evaluation.compare` and :func:`activation_refusal` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prescreen.datasets.collections import LabelledSet
from prescreen.errors import DatasetError, ModelError
from prescreen.evaluation.compare import MIN_RESAMPLES, Comparison, GateVerdict, SafetyCheck, compare_flags, gate
from prescreen.evaluation.evaluate import flag_truth
from prescreen.models.model_store import SHIPPED_DIR, ModelStore, StoredModel
from prescreen.models.onnx_model import FloatArray
from prescreen.models.task import Task, get_task
from prescreen.training.characterize import seen_ids
from prescreen.training.resolve import Predictor, resolve_model

#: signals per prediction call (the progress bar advances per chunk)
CHUNK = 64


@dataclass(frozen=True)
class Assessment:
    """What the gate measured and decided for one candidate.

    Attributes:
        task: the task name.
        candidate: the candidate in the store.
        active: the task's active model, ``None`` when it has none.
        data_path: the evaluation records' folder; ``data_digest`` its digest.
        n: records compared; ``skipped`` those the pipeline could not read.
        thresholds: ``candidate``/``active`` → the balanced threshold each model flags at.
        comparison: the paired figures (``None`` without an active model).
        verdict: the gate's decision.
        notes: warnings for the operator (training data used for the comparison, no active model).
    """

    task: str
    candidate: StoredModel
    active: StoredModel | None
    data_path: Path
    data_digest: str
    n: int
    skipped: int
    thresholds: dict[str, float]
    comparison: Comparison | None
    verdict: GateVerdict
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def detail(self) -> dict[str, Any]:
        """The figures as a JSON-safe record (for the event log)."""
        return {
            "passed": self.verdict.passed,
            "reasons": list(self.verdict.reasons),
            **self.verdict.figures,
            "data": {"path": str(self.data_path), "digest": self.data_digest, "n": self.n, "skipped": self.skipped},
            "thresholds": {k: round(v, 6) for k, v in self.thresholds.items()},
            "notes": list(self.notes),
        }


def balanced_threshold(model: StoredModel) -> float:
    """The threshold of the model's balanced operating point (its one threshold on older cards)."""
    return model.card.thresholds()["balanced"]


def safety_check(candidate: StoredModel, truth: npt.NDArray[np.bool_], scores: FloatArray) -> SafetyCheck:
    """The candidate's safety-point sensitivity: its card's, and measured on these records."""
    point = candidate.card.operating_points.get("safety")
    positives = int(truth.sum())
    flagged = scores >= candidate.card.thresholds()["safety"]
    measured = float(flagged[truth].mean()) if positives else None
    return SafetyCheck(point.sensitivity if point is not None else None, measured, positives)


def active_or_none(store: ModelStore, task: str) -> StoredModel | None:
    """The task's active model; ``None`` when it has none.

    Raises:
        ModelError: the active model is named but cannot be read.
    """
    tag = store.active_tag(task)
    return None if tag is None else store.get(tag)


def _predict(predictor: Predictor, signals: list[FloatArray], label: str, bar: Progress) -> FloatArray:
    job = bar.add_task(label, total=len(signals))
    out: list[FloatArray] = []
    for start in range(0, len(signals), CHUNK):
        chunk = signals[start : start + CHUNK]
        out.append(predictor.predict(chunk))
        bar.advance(job, len(chunk))
    return np.concatenate(out)


def unseen_records(
    dataset: LabelledSet, models: Sequence[tuple[str, StoredModel | None]]
) -> tuple[LabelledSet, list[str]]:
    """The records of ``dataset`` that none of ``models`` trained or was validated on (each model's
    split is rebuilt from its card when ``dataset`` is its training data), and notes saying what
    was left out — or that a split could not be rebuilt and the figures then include training data.

    Raises:
        DatasetError: nothing, or only one class, is left to compare on.
    """
    notes: list[str] = []
    excluded: set[str] = set()
    for name, model in models:
        if model is None:
            continue
        seen = seen_ids(model.card, dataset)
        if seen is None:
            notes.append(
                f"the data is the {name}'s training data and its split cannot be rebuilt from its card: "
                "the comparison includes records it trained on (it measures fit, not generalisation)"
            )
        elif seen:
            excluded |= seen
            notes.append(f"left out the {len(seen)} records the {name} trained or was validated on")
    if not excluded:
        return dataset, notes
    keep = np.asarray([i for i, rid in enumerate(dataset.ids) if rid not in excluded], dtype=np.int64)
    remaining = dataset.subset(keep)
    task = get_task(next(m for _, m in models if m is not None).task)
    flagged = flag_truth(task, remaining.labels) if len(remaining) else np.zeros(0, dtype=bool)
    if len(remaining) < 20 or flagged.all() or not flagged.any():
        raise DatasetError(
            f"only {len(remaining)} records of {dataset.path} are new to both models (or one class only): "
            "pass --data with records neither model trained on"
        )
    notes.append(f"measured on the {len(remaining)} of {len(dataset)} records new to both models")
    return remaining, notes


def assess_promotion(
    task: Task,
    tag: str,
    store: ModelStore,
    data: Path,
    *,
    cache_dir: Path | None = None,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
    progress: bool = True,
) -> Assessment:
    """Measure the candidate ``tag`` against the task's active model on the records in ``data``.

    Args:
        task: the task.
        tag: ``NAME:VERSION`` of the candidate in the store.
        store: the model store.
        data: labelled records (the task's layout), read for evaluation.
        cache_dir: preprocessing cache.
        resamples: paired bootstrap resamples (at least 1,000).
        seed: bootstrap seed.
        progress: Rich progress bars (on stderr) for reading and both predictions.

    Raises:
        ModelError: no such model, a model of another task, the candidate is already active.
        DatasetError: the data folder is missing or not in the task's layout.
        ValueError: fewer than 1,000 resamples.
    """
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"the gate needs at least {MIN_RESAMPLES} bootstrap resamples, not {resamples}")
    candidate = store.get(tag)
    if candidate.task != task.name:
        raise ModelError(f"model {candidate.tag} screens {candidate.task}, not {task.name}")
    active = active_or_none(store, task.name)
    if active is not None and active.tag == candidate.tag:
        raise ModelError(f"{candidate.tag} is already the active {task.name} model")
    dataset = task.load_dataset(data, cache_dir, progress, "eval")
    dataset, notes = unseen_records(dataset, [("candidate", candidate), ("active model", active)])
    truth = flag_truth(task, dataset.labels)
    thresholds = {"candidate": balanced_threshold(candidate)}
    comparison: Comparison | None = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
        cand_probs = _predict(resolve_model(task, candidate.tag, store), dataset.signals, candidate.tag, bar)
        cand_flags = task.flag_scores(cand_probs) >= thresholds["candidate"]
        if active is not None:
            thresholds["active"] = balanced_threshold(active)
            act_probs = _predict(resolve_model(task, active.tag, store), dataset.signals, active.tag, bar)
            act_flags = task.flag_scores(act_probs) >= thresholds["active"]
    if active is not None:
        comparison = compare_flags(truth, cand_flags, act_flags, resamples, seed)
    else:
        notes.append(f"{task.name} has no active model: nothing to compare with, so only the card decides")
    safety = safety_check(candidate, truth, task.flag_scores(cand_probs))
    thresholds["candidate safety"] = candidate.card.thresholds()["safety"]
    verdict = gate(comparison, candidate.card.missing_for_release(), safety=safety)
    return Assessment(
        task=task.name,
        candidate=candidate,
        active=active,
        data_path=dataset.path,
        data_digest=dataset.digest,
        n=len(dataset),
        skipped=len(dataset.skipped),
        thresholds=thresholds,
        comparison=comparison,
        verdict=verdict,
        notes=notes,
    )


def promote(assessment: Assessment, store: ModelStore, record: Callable[[str, Assessment], None]) -> bool:
    """Act on an assessment: record it (``promote`` or ``refuse``), then activate a passed candidate.

    The record comes first, so that no model becomes active without its event.

    Returns:
        whether the candidate is now the active model.
    """
    record("promote" if assessment.passed else "refuse", assessment)
    if assessment.passed:
        store.activate(assessment.task, assessment.candidate.tag)
    return assessment.passed


def is_shipped(model: StoredModel) -> bool:
    """Whether the model is the one shipped with prescreen for its task (same ONNX file)."""
    card = SHIPPED_DIR / model.task / "card.json"
    if not card.is_file():
        return False
    from prescreen.models.card import ModelCard

    digest = ModelCard.load(card).onnx.get("sha256")
    return bool(digest) and digest == model.card.onnx.get("sha256")


def activation_refusal(
    tag: str, active_tag: str | None, previously_active: set[str], shipped: bool, force: bool
) -> str | None:
    """Why ``models activate`` may not make ``tag`` active, or ``None`` when it may.

    A plain activation is a rollback: to a model that was the task's active model before (as the
    event record shows), to the shipped model, or to the one already active. Anything else must
    pass the promotion gate, unless the operator forces it (recorded as forced).
    """
    if force or shipped or tag == active_tag or tag in previously_active:
        return None
    return (
        f"{tag} was never the active model of this task: a new model goes through the gate with "
        "'prescreen models promote' (or activate with --force, recorded as forced)"
    )
