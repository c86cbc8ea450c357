"""Choice of the operating threshold, on validation data only."""

from __future__ import annotations

import numpy as np

from prescreen.evaluation.metrics import BoolArray, FloatArray

NUDGE = 1e-6
"""How far beyond the lowest / highest validation score the "flag everything" / "flag nothing" thresholds lie."""


def candidate_thresholds(score: FloatArray) -> FloatArray:
    """Every distinct flag set of ``score >= t``, each as one threshold, in ascending order.

    A threshold just below the lowest score (flag everything), the midpoint of each pair of
    consecutive distinct scores, and one just above the highest score (flag nothing). Where two
    scores are neighbouring floats, the midpoint rounds onto one of them; the higher score is then
    the threshold, so no cut is lost. Midpoints are computed as ``a / 2 + b / 2`` so that huge
    scores do not overflow.

    Args:
        score: finite flag scores, at least one.
    """
    values = np.unique(np.asarray(score, dtype=np.float64))
    lower, upper = values[:-1], values[1:]
    mid = lower / 2 + upper / 2
    mid = np.where((mid > lower) & (mid <= upper), mid, upper)
    lowest, highest = values[0] - NUDGE, values[-1] + NUDGE
    if not lowest < values[0]:  # the nudge is below the resolution of a huge score
        lowest = np.nextafter(values[0], -np.inf)
    if not highest > values[-1]:
        highest = np.nextafter(values[-1], np.inf)
    return np.concatenate([[lowest], mid, [highest]])


def choose_threshold(truth: BoolArray, score: FloatArray) -> float:
    """The threshold that maximizes flag accuracy; ties go to the higher sensitivity.

    Candidates are midpoints between consecutive distinct scores (plus the extremes: flag
    everything, flag nothing), so the threshold does not sit exactly on a validation score
    (except between neighbouring floats, see :func:`candidate_thresholds`).

    Args:
        truth: True where the study should be flagged.
        score: flag score per study; finite.

    Returns:
        A finite threshold, unless a score is within one float of ±1.8e308; it may lie just
        outside [0, 1]: "flag everything" or "flag nothing".

    Raises:
        ValueError: empty input, ``truth`` and ``score`` of different shapes, or a score that is
            NaN or infinite.
    """
    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if truth.size == 0:
        raise ValueError("cannot choose a threshold on no data")
    if truth.shape != score.shape or truth.ndim != 1:
        raise ValueError(f"truth {truth.shape} and score {score.shape} must be 1-D and of the same length")
    if not np.all(np.isfinite(score)):
        raise ValueError("cannot choose a threshold on NaN or infinite scores")
    candidates = candidate_thresholds(score)
    n, positives = len(score), int(truth.sum())
    # items with score >= t, and positives among them, for every candidate t at once
    flagged = n - np.searchsorted(np.sort(score), candidates, side="left")
    tp = positives - np.searchsorted(np.sort(score[truth]), candidates, side="left")
    correct = tp + (n - positives) - (flagged - tp)
    # most correct first, then most true positives (sensitivity); distinct candidates never tie on both
    best = int(np.argmax(correct * (positives + 1) + tp))
    return float(candidates[best])


SAFETY_SENSITIVITY = 0.95
"""The sensitivity the safety operating point must reach on validation data."""


def _counts_at(truth: BoolArray, score: FloatArray, candidates: FloatArray) -> tuple[np.ndarray, np.ndarray]:
    """True positives and false positives of ``score >= t`` for every candidate ``t``."""
    tp = int(truth.sum()) - np.searchsorted(np.sort(score[truth]), candidates, side="left")
    fp = int((~truth).sum()) - np.searchsorted(np.sort(score[~truth]), candidates, side="left")
    return tp, fp


def _checked(truth: BoolArray, score: FloatArray) -> tuple[BoolArray, FloatArray]:
    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if truth.shape != score.shape or truth.ndim != 1:
        raise ValueError(f"truth {truth.shape} and score {score.shape} must be 1-D and of the same length")
    if not np.all(np.isfinite(score)):
        raise ValueError("cannot choose a threshold on NaN or infinite scores")
    if truth.all() or not truth.any():
        raise ValueError("choosing an operating point needs both flagged and normal records")
    return truth, score


def choose_balanced(truth: BoolArray, score: FloatArray) -> float:
    """The threshold that maximizes Youden's J (sensitivity + specificity - 1); ties go to the
    higher sensitivity. Unlike accuracy, J does not depend on the prevalence of the data.

    Raises:
        ValueError: shapes differ, a score is not finite, or one class is missing.
    """
    truth, score = _checked(truth, score)
    candidates = candidate_thresholds(score)
    tp, fp = _counts_at(truth, score, candidates)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    # J * P * N in integers, so that ties are exact; then the most true positives
    j = tp * negatives - fp * positives
    best = int(np.argmax(j * (positives + 1) + tp))
    return float(candidates[best])


def choose_safety(
    truth: BoolArray, score: FloatArray, ceiling: float, sensitivity: float = SAFETY_SENSITIVITY
) -> float:
    """The highest threshold whose sensitivity reaches ``sensitivity``, but not above ``ceiling``
    (the balanced threshold), so that the safety point flags at least what the balanced one flags.

    Raises:
        ValueError: shapes differ, a score is not finite, or one class is missing.
    """
    truth, score = _checked(truth, score)
    candidates = candidate_thresholds(score)
    tp, _ = _counts_at(truth, score, candidates)
    reaching = candidates[(tp >= sensitivity * int(truth.sum()) - 1e-9) & (candidates <= ceiling)]
    # the lowest candidate flags everything (sensitivity 1), so it always qualifies unless above the ceiling
    return float(reaching.max()) if reaching.size else float(min(ceiling, candidates[0]))
