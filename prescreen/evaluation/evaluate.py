"""From class probabilities and labels to an :class:`Evaluation` with bootstrap CIs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from prescreen.config import get_settings
from prescreen.evaluation.metrics import (
    IntArray,
    binary_metrics,
    bootstrap_ci,
    challenge_f1,
    multiclass_confusion,
)
from prescreen.models.card import Evaluation, MetricValue, Target
from prescreen.models.task import Task


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _metric_value(value: float, ci: tuple[float, float]) -> MetricValue:
    """A point estimate with its interval; NaN becomes ``None``, and an interval that misses the
    estimate by the percentile method's rounding is widened to include it."""
    m = MetricValue(value=_finite(value), ci_low=_finite(ci[0]), ci_high=_finite(ci[1]))
    if m.value is not None and m.ci_low is not None and m.ci_high is not None:
        m.ci_low, m.ci_high = min(m.ci_low, m.value), max(m.ci_high, m.value)
    return m


def flag_truth(task: Task, labels: IntArray) -> npt.NDArray[np.bool_]:
    return ~np.isin(labels, task.normal_index)


def predicted_classes(task: Task, probs: npt.NDArray[np.float32], threshold: float) -> IntArray:
    """Class per item, consistent with the flag (see ``Task.label_for``)."""
    flags = task.flag_scores(probs) >= threshold
    return np.asarray(
        [task.classes.index(task.label_for(p, bool(f))) for p, f in zip(probs, flags, strict=True)],
        dtype=np.int64,
    )


def evaluate_probs(
    task: Task,
    labels: IntArray,
    probs: npt.NDArray[np.float32],
    threshold: float,
    *,
    split: str,
    dataset_path: str,
    dataset_digest: str,
    resamples: int | None = None,
    seed: int = 0,
    note: str | None = None,
) -> Evaluation:
    """Metrics of the flag with 95 % percentile-bootstrap CIs, the class confusion matrix, the
    CinC-style challenge F1 and the verdict against the target in settings."""
    settings = get_settings()
    resamples = resamples or settings.bootstrap_resamples
    truth = flag_truth(task, labels)
    score = task.flag_scores(probs)
    point = binary_metrics(truth, score, threshold)
    cis = bootstrap_ci(lambda i: binary_metrics(truth[i], score[i], threshold), len(labels), resamples, seed)
    metrics = {k: _metric_value(v, cis[k]) for k, v in point.items()}
    predicted = predicted_classes(task, probs, threshold)
    scored = [i for i, c in enumerate(task.classes) if c not in task.f1_unscored]
    target_value = metrics[settings.target_metric].value
    return Evaluation(
        split=split,
        dataset_path=dataset_path,
        dataset_digest=dataset_digest,
        n=len(labels),
        metrics=metrics,
        target=Target(
            metric=settings.target_metric,
            threshold=settings.target_threshold,
            met=bool(target_value is not None and target_value >= settings.target_threshold),
        ),
        challenge_f1=challenge_f1(labels, predicted, scored),
        confusion=multiclass_confusion(labels, predicted, len(task.classes)),
        when=datetime.now(UTC).isoformat(timespec="seconds"),
        note=note,
    )


POINT_METRICS = ("sensitivity", "specificity", "accuracy", "balanced_accuracy")
"""What :func:`at_operating_points` reports at each point."""


@dataclass(frozen=True)
class PointFigures:
    """The flag's figures at one operating point of the model, on one data set."""

    threshold: float
    flagged_share: float
    metrics: dict[str, MetricValue]


def at_operating_points(
    truth: npt.NDArray[np.bool_],
    score: npt.NDArray[np.float32],
    thresholds: Mapping[str, float],
    *,
    resamples: int,
    seed: int = 0,
) -> dict[str, PointFigures]:
    """Sensitivity, specificity, accuracy and balanced accuracy of ``score >= threshold`` at each
    named operating point, with 95 % percentile-bootstrap CIs. All points share one set of
    resamples, so that the intervals of two points describe the same resampled data sets.

    Balanced accuracy (the mean of sensitivity and specificity) does not depend on the data set's
    prevalence: it is the figure to compare between sites whose prevalence differs.

    Args:
        truth: True where the study should be flagged.
        score: flag score per study.
        thresholds: operating point name → threshold (``ModelCard.thresholds()``).
        resamples: bootstrap resamples.
        seed: generator seed.
    """

    def figures(index: IntArray) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, threshold in thresholds.items():
            m = binary_metrics(truth[index], score[index], threshold)
            m["balanced_accuracy"] = (m["sensitivity"] + m["specificity"]) / 2
            out.update({f"{name}/{k}": m[k] for k in POINT_METRICS})
        return out

    every = np.arange(len(truth))
    point = figures(every)
    cis = bootstrap_ci(figures, len(truth), resamples, seed)
    result: dict[str, PointFigures] = {}
    for name, threshold in thresholds.items():
        metrics = {k: _metric_value(point[f"{name}/{k}"], cis[f"{name}/{k}"]) for k in POINT_METRICS}
        result[name] = PointFigures(float(threshold), float(np.mean(score >= threshold)), metrics)
    return result
