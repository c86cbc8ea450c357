"""The promotion gate's figures: two models' flags on the same records, compared by a paired bootstrap.

Both models are judged on the same records at their balanced operating points. The difference
(candidate − active) of accuracy and sensitivity gets a 95 % percentile interval from a paired
bootstrap: every resample draws one set of record indices and measures both models on it, so
the interval reflects how the two models differ on the same studies, not the noise of two
independent samples. The candidate is non-inferior when the lower bound of each difference
stays at or above its margin.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prescreen.evaluation.metrics import BoolArray, FloatArray, IntArray

#: non-inferiority margins: the lower 95 % bound of Δ (candidate − active) must reach these
ACCURACY_MARGIN = -0.01
SENSITIVITY_MARGIN = -0.02
MARGINS: dict[str, float] = {"accuracy": ACCURACY_MARGIN, "sensitivity": SENSITIVITY_MARGIN}
#: no model ships whose safety point misses more than one in ten of the flagged class
SAFETY_MIN_SENSITIVITY = 0.90
#: the metrics shown side by side (specificity is shown, not gated)
COMPARED = ("accuracy", "sensitivity", "specificity")
MIN_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % bootstrap interval; NaN where undefined (e.g. sensitivity
    without flagged records)."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON-safe: NaN becomes ``None``."""
        return {k: _json_float(v) for k, v in (("value", self.value), ("low", self.low), ("high", self.high))}


@dataclass(frozen=True)
class Comparison:
    """Candidate and active model on the same ``n`` records (``positives`` of them to be flagged).

    Attributes:
        candidate: metric → interval of the candidate.
        active: metric → interval of the active model.
        delta: metric → interval of candidate − active, paired.
    """

    n: int
    positives: int
    resamples: int
    seed: int
    candidate: dict[str, Interval]
    active: dict[str, Interval]
    delta: dict[str, Interval]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe figures (for the event record and ``--json`` style output)."""
        return {
            "n": self.n,
            "positives": self.positives,
            "resamples": self.resamples,
            "seed": self.seed,
            "candidate": {k: v.as_dict() for k, v in self.candidate.items()},
            "active": {k: v.as_dict() for k, v in self.active.items()},
            "delta": {k: v.as_dict() for k, v in self.delta.items()},
        }


@dataclass(frozen=True)
class GateVerdict:
    """The promotion gate's decision.

    Attributes:
        passed: the candidate may be promoted.
        reasons: why not (empty when passed), one line each.
        figures: what the decision rests on: the comparison (``None`` when there is no active
            model to compare with), the margins and what the card lacks.
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def _checked(truth: BoolArray, flags: BoolArray, name: str) -> BoolArray:
    flags = np.asarray(flags)
    if flags.shape != truth.shape:
        raise ValueError(f"{name} flags {flags.shape} and truth {truth.shape} must be 1-D and of the same length")
    return flags.astype(bool)


def flag_rates(truth: BoolArray, flags: BoolArray) -> dict[str, float]:
    """Accuracy, sensitivity and specificity of flag decisions; NaN where a denominator is zero.

    Raises:
        ValueError: ``truth`` and ``flags`` of different shapes, or not 1-D.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 1:
        raise ValueError(f"truth must be 1-D, not of shape {truth.shape}")
    flags = _checked(truth, flags, "the")
    positives = int(truth.sum())
    negatives = truth.size - positives
    tp = int(np.sum(flags & truth))
    tn = int(np.sum(~flags & ~truth))
    nan = float("nan")
    return {
        "accuracy": (tp + tn) / truth.size if truth.size else nan,
        "sensitivity": tp / positives if positives else nan,
        "specificity": tn / negatives if negatives else nan,
    }


def _resample_counts(n: int, resamples: int, seed: int, chunk: int = 200) -> Iterator[IntArray]:
    """Bootstrap resamples of ``range(n)`` as count matrices: row ``r``, column ``i`` says how often
    record ``i`` was drawn in resample ``r`` (a percentile bootstrap's draws, counted)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        k = min(chunk, resamples - done)
        drawn = rng.integers(0, n, (k, n)) + (np.arange(k, dtype=np.int64) * n)[:, None]
        yield np.bincount(drawn.ravel(), minlength=k * n).reshape(k, n)
        done += k


def _rates(counts: IntArray, truth: BoolArray, flags: BoolArray) -> dict[str, FloatArray]:
    """Accuracy, sensitivity, specificity per resample (rows of ``counts``); NaN where undefined."""
    n = counts.sum(axis=1).astype(np.float64)
    positives = (counts @ truth.astype(np.int64)).astype(np.float64)
    negatives = n - positives
    tp = (counts @ (flags & truth).astype(np.int64)).astype(np.float64)
    tn = (counts @ (~flags & ~truth).astype(np.int64)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / n,
            "sensitivity": np.where(positives > 0, tp / positives, np.nan),
            "specificity": np.where(negatives > 0, tn / negatives, np.nan),
        }


def _percentile(values: FloatArray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite values (an undefined resample, e.g. one without a flagged
    record, is left out, as in :func:`~prescreen.evaluation.metrics.bootstrap_ci`)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))


def compare_flags(
    truth: BoolArray,
    candidate: BoolArray,
    active: BoolArray,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Point figures and paired-bootstrap intervals of both models and of their difference.

    Every resample draws one multiset of records and measures both models on it (paired).

    Args:
        truth: True where a record should be flagged.
        candidate: the candidate's flag per record (at its balanced operating point).
        active: the active model's flag per record, same records in the same order.
        resamples: bootstrap resamples (at least 1,000).
        seed: generator seed: the same inputs give the same intervals.
        level: coverage of the intervals (95 %).

    Returns:
        the comparison; each interval contains its point estimate (a percentile interval can miss
        it by rounding, and is then widened to it).

    Raises:
        ValueError: no records, arrays of different shapes, or fewer than 1,000 resamples.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.ndim != 1 or truth.size == 0:
        raise ValueError(f"need a 1-D, non-empty truth array, not shape {truth.shape}")
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"the gate needs at least {MIN_RESAMPLES} bootstrap resamples, not {resamples}")
    cand = _checked(truth, candidate, "candidate")
    act = _checked(truth, active, "active")
    draws: dict[str, list[FloatArray]] = {}
    for counts in _resample_counts(truth.size, resamples, seed):
        c, a = _rates(counts, truth, cand), _rates(counts, truth, act)
        for k in COMPARED:
            draws.setdefault(f"candidate.{k}", []).append(c[k])
            draws.setdefault(f"active.{k}", []).append(a[k])
            draws.setdefault(f"delta.{k}", []).append(c[k] - a[k])
    point_c, point_a = flag_rates(truth, cand), flag_rates(truth, act)
    point = {f"candidate.{k}": point_c[k] for k in COMPARED}
    point.update({f"active.{k}": point_a[k] for k in COMPARED})
    point.update({f"delta.{k}": point_c[k] - point_a[k] for k in COMPARED})

    def interval(key: str) -> Interval:
        value = point[key]
        if math.isnan(value):
            return Interval(value, float("nan"), float("nan"))
        low, high = _percentile(np.concatenate(draws[key]), level)
        return Interval(value, min(low, value), max(high, value))

    return Comparison(
        n=int(truth.size),
        positives=int(truth.sum()),
        resamples=resamples,
        seed=seed,
        candidate={k: interval(f"candidate.{k}") for k in COMPARED},
        active={k: interval(f"active.{k}") for k in COMPARED},
        delta={k: interval(f"delta.{k}") for k in COMPARED},
    )


@dataclass(frozen=True)
class SafetyCheck:
    """The candidate's safety-point sensitivity for the flagged class: as its card states it (on the
    validation data the point was chosen on) and as measured on the gate's records.

    Attributes:
        card: the card's safety sensitivity (``None``: the card has none).
        measured: the sensitivity on the gate's records (``None``: they hold no flagged-class record).
        positives: how many flagged-class records ``measured`` rests on.
    """

    card: float | None
    measured: float | None
    positives: int

    def refusals(self) -> list[str]:
        floor = SAFETY_MIN_SENSITIVITY
        out = []
        if self.card is not None and self.card < floor:
            out.append(f"the card's safety-point sensitivity {self.card:.3f} is below {floor:.2f}")
        if self.measured is None:
            out.append("the safety-point sensitivity cannot be measured: the records hold no flagged-class record")
        elif self.measured < floor:
            out.append(
                f"the safety-point sensitivity on these records is {self.measured:.3f} "
                f"({self.positives} flagged-class records), below {floor:.2f}"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "card": self.card,
            "measured": self.measured,
            "positives": self.positives,
            "floor": SAFETY_MIN_SENSITIVITY,
        }


def gate(
    comparison: Comparison | None,
    card_missing: list[str],
    margins: dict[str, float] | None = None,
    safety: SafetyCheck | None = None,
) -> GateVerdict:
    """Decide a promotion: non-inferior on every gated metric, a complete card, and a safety point
    that keeps its sensitivity (at least :data:`SAFETY_MIN_SENSITIVITY` on its own validation and on
    the gate's records).

    Args:
        comparison: candidate vs active; ``None`` when the task has no active model (then only the
            card decides).
        card_missing: what the candidate's card lacks (``ModelCard.missing_for_release()``).
        margins: metric → lowest allowed lower bound of Δ (default :data:`MARGINS`).
        safety: the candidate's safety-point sensitivity on its card and on the gate's records
            (``None``: not checked).

    Returns:
        the verdict; a Δ that cannot be measured (e.g. no flagged record, so no sensitivity)
        fails, since non-inferiority is then not shown.
    """
    margins = MARGINS if margins is None else margins
    reasons: list[str] = []
    if comparison is not None:
        for metric, margin in margins.items():
            low = comparison.delta[metric].low
            if math.isnan(low):
                reasons.append(f"Δ{metric} cannot be measured on these records, so non-inferiority is not shown")
            elif low < margin:
                reasons.append(
                    f"Δ{metric} lower 95 % bound {low:+.3f} is below the non-inferiority margin {margin:+.3f}"
                )
    if card_missing:
        reasons.append(f"the candidate's model card is incomplete: it lacks {', '.join(card_missing)}")
    if safety is not None:
        reasons.extend(safety.refusals())
    figures: dict[str, Any] = {
        "comparison": comparison.as_dict() if comparison is not None else None,
        "margins": dict(margins),
        "card_missing": list(card_missing),
        "safety": safety.as_dict() if safety is not None else None,
    }
    return GateVerdict(passed=not reasons, reasons=reasons, figures=figures)
