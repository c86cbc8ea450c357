"""Calibration on validation data: a temperature fitted by likelihood, the expected calibration
error (ECE) and a reliability table, so that a flag score of 0.8 means 80 %."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from prescreen.evaluation.metrics import BoolArray, FloatArray, IntArray
from prescreen.models.calibration import EPS, apply_temperature

TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(labels: IntArray, probs: FloatArray) -> float:
    """The temperature minimizing the negative log-likelihood of ``labels`` under
    :func:`apply_temperature` (bounded search over ``TEMPERATURE_RANGE``).

    Raises:
        ValueError: no labels, or probabilities of another length.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.size == 0 or probs.shape[0] != labels.size:
        raise ValueError(f"need one probability row per label, not {probs.shape[0]} rows for {labels.size} labels")

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))[np.arange(labels.size), labels]
        return float(-np.mean(np.log(np.clip(p, EPS, 1.0))))

    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def reliability(truth: BoolArray, score: FloatArray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width score bin: mean score, observed flag rate and count (empty bins left out)."""
    truth = np.asarray(truth, dtype=bool)
    score = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    which = np.minimum((score * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "mean_score": round(float(score[inside].mean()), 4),
                    "observed": round(float(truth[inside].mean()), 4),
                    "count": int(inside.sum()),
                }
            )
    return out


def expected_calibration_error(truth: BoolArray, score: FloatArray, bins: int = 10) -> float:
    """Count-weighted mean |observed flag rate - mean score| over equal-width score bins.

    Raises:
        ValueError: no data.
    """
    table = reliability(truth, score, bins)
    total = sum(row["count"] for row in table)
    if total == 0:
        raise ValueError("no data to measure calibration on")
    return float(sum(row["count"] * abs(row["observed"] - row["mean_score"]) for row in table) / total)
