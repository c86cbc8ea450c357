"""Screening metrics of a binary flag, and multi-class figures of the underlying classes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.int64]

BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auroc")


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def binary_metrics(truth: BoolArray, score: FloatArray, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1 of ``score >= threshold`` and AUROC.

    Args:
        truth: True where the study should be flagged.
        score: flag score per study (higher = more likely abnormal).
        threshold: operating threshold.

    Returns:
        metric name → value; NaN where a metric is undefined (e.g. AUROC of one class).
    """
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(score) >= threshold
    tp = float(np.sum(pred & truth))
    tn = float(np.sum(~pred & ~truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    both = truth.any() and not truth.all()
    return {
        "accuracy": _ratio(tp + tn, len(truth)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": float(roc_auc_score(truth, score)) if both else float("nan"),
    }


def challenge_f1(labels: IntArray, predicted: IntArray, scored: list[int]) -> float:
    """The CinC 2017 challenge score: mean F1 over the scored classes (N, A, O)."""
    return float(np.mean(f1_score(labels, predicted, labels=scored, average=None, zero_division=0)))


def multiclass_confusion(labels: IntArray, predicted: IntArray, n_classes: int) -> list[list[int]]:
    """Rows: true class; columns: predicted class."""
    cm = confusion_matrix(labels, predicted, labels=list(range(n_classes)))
    return [[int(v) for v in row] for row in cm]


Statistic = Callable[[IntArray], dict[str, float]]


def bootstrap_ci(
    statistic: Statistic, n: int, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of every value ``statistic`` returns.

    Args:
        statistic: takes an index array (a resample of ``range(n)``) and returns metric values.
        n: number of items.
        resamples: bootstrap resamples (≥ 1,000 for reported figures).
        seed: generator seed, so the same data gives the same interval.
        level: coverage of the interval.

    Returns:
        metric name → (low, high); NaN resamples (undefined metrics) are left out.
    """
    if n == 0:
        raise ValueError("cannot bootstrap an empty set")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        for key, value in statistic(rng.integers(0, n, n)).items():
            draws.setdefault(key, []).append(value)
    alpha = (1 - level) / 2
    out: dict[str, tuple[float, float]] = {}
    for key, values in draws.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            out[key] = (float("nan"), float("nan"))
        else:
            out[key] = (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha)))
    return out
