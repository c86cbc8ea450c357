"""Choice of the operating threshold, on validation data only."""

from __future__ import annotations

import numpy as np

from prescreen.evaluation.metrics import BoolArray, FloatArray


def choose_threshold(truth: BoolArray, score: FloatArray) -> float:
    """The threshold that maximizes flag accuracy; ties go to the higher sensitivity.

    Candidates are midpoints between consecutive distinct scores (plus the extremes), so the
    threshold does not sit exactly on a validation score.

    Args:
        truth: True where the study should be flagged.
        score: flag score per study.

    Raises:
        ValueError: empty input.
    """
    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if truth.size == 0:
        raise ValueError("cannot choose a threshold on no data")
    values = np.unique(score)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    best_key: tuple[float, float] = (-1.0, -1.0)
    best_t = 0.5
    positives = max(int(truth.sum()), 1)
    for t in candidates:
        pred = score >= t
        acc = float(np.mean(pred == truth))
        sens = float(np.sum(pred & truth)) / positives
        if (acc, sens) > best_key:
            best_key, best_t = (acc, sens), float(t)
    return best_t  # may lie just outside [0, 1]: "flag everything" or "flag nothing"
