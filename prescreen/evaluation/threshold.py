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
