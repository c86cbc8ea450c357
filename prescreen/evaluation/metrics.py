"""Screening metrics of a binary flag, and multi-class figures of the underlying classes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.int64]

BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auroc")


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def _checked(truth: BoolArray, score: FloatArray) -> tuple[BoolArray, FloatArray]:
    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score)
    if truth.ndim != 1 or truth.shape != score.shape:
        raise ValueError(f"truth {truth.shape} and score {score.shape} must be 1-D and of the same length")
    if np.any(np.isnan(score)):
        raise ValueError("a flag score is NaN")
    return truth, score


def auroc(truth: BoolArray, score: FloatArray) -> float:
    """Area under the ROC curve: the Mann–Whitney probability that a positive outscores a negative.

    Ties count one half. Computed from average ranks, so it is exact for any ordered scores
    (including ±inf) and depends only on their order.

    Args:
        truth: True where the study should be flagged.
        score: flag score per study; not NaN.

    Returns:
        The AUROC in [0, 1]; NaN when ``truth`` holds one class only (or nothing), where it is undefined.

    Raises:
        ValueError: ``truth`` and ``score`` of different shapes, or a NaN score.
    """
    truth, score = _checked(truth, score)
    positives = int(np.sum(truth))
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last item of each group of equal scores
    ranks = (ends - (counts - 1) / 2)[inverse]  # average rank of ties
    u = float(np.sum(ranks[truth])) - positives * (positives + 1) / 2
    return u / (positives * negatives)


def binary_metrics(truth: BoolArray, score: FloatArray, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1 of ``score >= threshold`` and AUROC.

    Args:
        truth: True where the study should be flagged.
        score: flag score per study (higher = more likely abnormal); not NaN.
        threshold: operating threshold.

    Returns:
        metric name → value; NaN where a metric is undefined (a zero denominator, e.g. sensitivity
        without positives, or AUROC of one class). Callers turn NaN into "n/a" (``None``).

    Raises:
        ValueError: ``truth`` and ``score`` of different shapes, or a NaN score.
    """
    truth, score = _checked(truth, score)
    pred = score >= threshold
    tp = float(np.sum(pred & truth))
    tn = float(np.sum(~pred & ~truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    return {
        "accuracy": _ratio(tp + tn, len(truth)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": auroc(truth, score),
    }


def multiclass_confusion(labels: IntArray, predicted: IntArray, n_classes: int) -> list[list[int]]:
    """Rows: true class; columns: predicted class; all zeros for no items.

    Raises:
        ValueError: ``labels`` and ``predicted`` of different shapes, or a class outside ``range(n_classes)``.
    """
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if labels.ndim != 1 or labels.shape != predicted.shape:
        raise ValueError(f"labels {labels.shape} and predicted {predicted.shape} must be 1-D and of the same length")
    for name, arr in (("label", labels), ("predicted class", predicted)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"a {name} lies outside 0..{n_classes - 1}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return [[int(v) for v in row] for row in cm]


def challenge_f1(labels: IntArray, predicted: IntArray, scored: list[int]) -> float:
    """The CinC 2017 challenge score: mean F1 over the scored classes (N, A, O).

    A class with no true, no predicted item has F1 0 (as scikit-learn's ``zero_division=0``).

    Raises:
        ValueError: no scored class, or ``labels`` and ``predicted`` of different shapes.
    """
    if not scored:
        raise ValueError("no scored class")
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels {labels.shape} and predicted {predicted.shape} must be of the same length")
    per_class = []
    for c in scored:
        tp = int(np.sum((labels == c) & (predicted == c)))
        wrong = int(np.sum((labels == c) != (predicted == c)))  # false positives + false negatives
        per_class.append(_ratio(2 * tp, 2 * tp + wrong) if tp + wrong else 0.0)
    return float(np.mean(per_class))


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
        metric name → (low, high); NaN or infinite resamples (undefined metrics) are left out, and a
        metric with no defined resample gets (NaN, NaN).

    Raises:
        ValueError: ``n`` or ``resamples`` below 1, or ``level`` outside (0, 1).
    """
    if n < 1:
        raise ValueError(f"cannot bootstrap an empty set (n={n})")
    if resamples < 1:
        raise ValueError(f"need at least one resample, not {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the interval level must lie in (0, 1), not {level}")
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


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default).

    Args:
        successes: how many of the ``n`` trials succeeded.
        n: trials; 0 gives (NaN, NaN).

    Raises:
        ValueError: ``successes`` outside ``0..n``.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, not {successes} of {n}")
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
