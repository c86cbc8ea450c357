"""From class probabilities and labels to an :class:`Evaluation` with bootstrap CIs."""

from __future__ import annotations

import math
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
    metrics = {
        k: MetricValue(value=_finite(v), ci_low=_finite(cis[k][0]), ci_high=_finite(cis[k][1]))
        for k, v in point.items()
    }
    for m in metrics.values():  # a percentile interval can miss the point estimate by rounding
        if m.value is not None and m.ci_low is not None and m.ci_high is not None:
            m.ci_low, m.ci_high = min(m.ci_low, m.value), max(m.ci_high, m.value)
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
