"""Everything a card needs to be released, measured on validation data only: the calibration
temperature, the two operating points, the validation score distribution (the drift reference),
and how the figures move with another prevalence and under what a new site brings.

The validation data may be one held-out split or the out-of-fold predictions of a k-fold
cross-validation (small sets); ``chosen_on`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prescreen.evaluation.calibration import expected_calibration_error, fit_temperature, reliability
from prescreen.evaluation.evaluate import flag_truth
from prescreen.evaluation.metrics import FloatArray, IntArray, binary_metrics, wilson_interval
from prescreen.evaluation.shift import perturbations_for
from prescreen.evaluation.threshold import SAFETY_SENSITIVITY, choose_balanced, choose_safety
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import Calibration, OperatingPointSpec, ScoreReference
from prescreen.models.task import Task

PREVALENCES = (0.1, 0.3, 0.5, 0.7)
REFERENCE_BINS = 10

Predict = Callable[[list[FloatArray]], FloatArray]
"""Preprocessed signals → uncalibrated class probabilities (the model under characterization)."""


@dataclass
class Characterization:
    """What :func:`characterize` adds to a card."""

    calibration: Calibration
    operating_points: dict[str, OperatingPointSpec]
    score_reference: ScoreReference
    shift: dict[str, object]


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), digits)


def point_spec(
    truth: np.ndarray, score: np.ndarray, threshold: float, criterion: str, chosen_on: str
) -> OperatingPointSpec:
    """An operating point with its validation sensitivity (and Wilson lower bound) and specificity."""
    flagged = score >= threshold
    positives, negatives = int(truth.sum()), int((~truth).sum())
    hits = int((flagged & truth).sum())
    low, _ = wilson_interval(hits, positives)
    return OperatingPointSpec(
        threshold=round(float(threshold), 6),
        criterion=criterion,
        sensitivity=_round(hits / positives if positives else float("nan")),
        specificity=_round(float((~flagged & ~truth).sum()) / negatives if negatives else float("nan")),
        sensitivity_wilson_low=_round(low),
        positives=positives,
        negatives=negatives,
        chosen_on=chosen_on,
    )


def at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> dict[str, float | None]:
    """Accuracy, PPV and NPV a site of another prevalence would see, from sensitivity and
    specificity (which do not depend on prevalence)."""
    tp, fn = prevalence * sensitivity, prevalence * (1 - sensitivity)
    tn, fp = (1 - prevalence) * specificity, (1 - prevalence) * (1 - specificity)
    return {
        "prevalence": prevalence,
        "accuracy": _round(tp + tn),
        "ppv": _round(tp / (tp + fp)) if tp + fp > 0 else None,
        "npv": _round(tn / (tn + fn)) if tn + fn > 0 else None,
    }


def prevalence_table(points: dict[str, OperatingPointSpec], validation_prevalence: float) -> list[dict[str, object]]:
    """Rows per operating point and prevalence (the validation prevalence first)."""
    rows: list[dict[str, object]] = []
    for name, spec in points.items():
        if spec.sensitivity is None or spec.specificity is None:
            continue
        for p in (round(validation_prevalence, 4), *PREVALENCES):
            rows.append({"operating_point": name, **at_prevalence(spec.sensitivity, spec.specificity, p)})
    return rows


def score_reference(score: np.ndarray, measured_on: str) -> ScoreReference:
    """The validation flag-score distribution in ``REFERENCE_BINS`` equal-width bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, REFERENCE_BINS + 1)
    counts, _ = np.histogram(np.clip(score, 0.0, 1.0), bins=edges)
    return ScoreReference(
        edges=[round(float(e), 4) for e in edges],
        proportions=[round(float(c) / max(1, len(score)), 6) for c in counts],
        n=len(score),
        measured_on=measured_on,
    )


def characterize(
    task: Task,
    labels: IntArray,
    raw_probs: FloatArray,
    chosen_on: str,
    *,
    signals: list[FloatArray] | None = None,
    predict: Predict | None = None,
    seed: int = 0,
) -> Characterization:
    """Calibrate, choose both operating points and measure shift on validation data.

    Args:
        task: the task.
        labels: validation labels.
        raw_probs: the model's uncalibrated class probabilities of those records.
        chosen_on: what the validation data is (``validation split (n=…)`` or ``out-of-fold …``).
        signals: the validation records' model inputs, and ``predict``, the model: with both, the
            perturbation table is measured (without, it is left out).
        seed: seed of the perturbations' noise.

    Raises:
        ValueError: the validation data lacks flagged or normal records.
    """
    temperature = round(fit_temperature(labels, raw_probs), 4)  # as stored: thresholds chosen on what serves
    probs = apply_temperature(raw_probs, temperature)
    truth = flag_truth(task, labels)
    raw_score, score = task.flag_scores(raw_probs), task.flag_scores(probs)
    calibration = Calibration(
        temperature=temperature,
        fitted_on=chosen_on,
        ece_before=_round(expected_calibration_error(truth, raw_score)),
        ece_after=_round(expected_calibration_error(truth, score)),
        reliability=reliability(truth, score),
    )
    balanced = choose_balanced(truth, score)
    safety = choose_safety(truth, score, ceiling=balanced)
    points = {
        "balanced": point_spec(truth, score, balanced, "maximum Youden J (sensitivity + specificity - 1)", chosen_on),
        "safety": point_spec(
            truth,
            score,
            safety,
            f"highest threshold with sensitivity >= {SAFETY_SENSITIVITY}, at most balanced",
            chosen_on,
        ),
    }
    shift: dict[str, object] = {"prevalence": prevalence_table(points, float(truth.mean()))}
    if signals is not None and predict is not None:
        shift["perturbations"] = perturbation_table(task, labels, signals, predict, temperature, points, seed)
    return Characterization(calibration, points, score_reference(score, chosen_on), shift)


def perturbation_table(
    task: Task,
    labels: IntArray,
    signals: list[FloatArray],
    predict: Predict,
    temperature: float,
    points: dict[str, OperatingPointSpec],
    seed: int = 0,
) -> list[dict[str, object]]:
    """Metrics at both operating points on the validation records as they are and under each
    perturbation of the task's input kind; ``delta_accuracy`` is against the unperturbed row."""
    truth = flag_truth(task, labels)
    rows: list[dict[str, object]] = []
    base: dict[str, float] = {}
    for name, perturb in [("none", None), *perturbations_for(task.input_spec.get("kind", ""))]:
        rng = np.random.default_rng(seed)
        inputs = signals if perturb is None else [perturb(s, rng) for s in signals]
        score = task.flag_scores(apply_temperature(predict(inputs), temperature))
        for point, spec in points.items():
            m = binary_metrics(truth, score, spec.threshold)
            if perturb is None:
                base[point] = m["accuracy"]
            rows.append(
                {
                    "perturbation": name,
                    "operating_point": point,
                    "accuracy": _round(m["accuracy"]),
                    "sensitivity": _round(m["sensitivity"]),
                    "specificity": _round(m["specificity"]),
                    "auroc": _round(m["auroc"]),
                    "delta_accuracy": _round(m["accuracy"] - base[point]),
                }
            )
    return rows
