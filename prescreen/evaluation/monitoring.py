"""In-service monitoring, as pure functions: the figures of a model on the studies physicians have
labelled (sensitivity, specificity, accuracy with Wilson 95 % intervals and the number of studies
behind each), the drift of a site's flag scores from the card's validation distribution (PSI), and
when either raises an alarm.

* **Ground truth** is the physician's label in the final report: a study *should be flagged* when
  the label is not one of the task's normal classes; a study labelled "not assessable" counts in
  no figure (it is counted apart).
* **Rolling**: the figures cover the last ``window`` labelled studies (in the order the model saw
  them), so an old good stretch cannot hide a recent bad one.
* **Below target**: the Wilson upper bound of the target metric is below the target, on at least
  ``min_labelled`` studies (the denominator of that metric): even the most favourable reading of
  the evidence misses the target.
* **Drift**: the PSI of the last ``window`` scores of one (model version, institution) against the
  card's reference distribution exceeds ``psi_threshold``, on a full window. A card without a
  reference gives no PSI and no alarm.

No I/O here: :mod:`prescreen.store.monitoring` reads the rows and stores the alarms.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from prescreen.config import Settings
from prescreen.evaluation.metrics import wilson_interval

PSI_EPSILON = 1e-4
"""The share an empty bin counts as, so that its log ratio stays finite."""

METRICS = ("sensitivity", "specificity", "accuracy")
"""The in-service figures (their ground truth is the physician's label)."""

BELOW_TARGET = "below_target"
"""Alarm kind: the upper bound of the target metric is below the target."""
SCORE_DRIFT = "score_drift"
"""Alarm kind: a site's flag-score distribution drifted from the card's validation distribution."""
ALARM_KINDS = (BELOW_TARGET, SCORE_DRIFT)


@dataclass(frozen=True)
class MonitoringPolicy:
    """What monitoring measures over and when it alarms.

    Attributes:
        window: the figures and the PSI cover the last this many studies.
        psi_threshold: a PSI above this (over a full window) is drift.
        min_labelled: labelled studies the target metric needs before it can alarm.
        target_metric: one of :data:`METRICS` (another setting falls back to accuracy).
        target: the figure the model must reach.
    """

    window: int = 200
    psi_threshold: float = 0.25
    min_labelled: int = 30
    target_metric: str = "accuracy"
    target: float = 0.95

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_labelled < 1:
            raise ValueError(f"window ({self.window}) and min_labelled ({self.min_labelled}) must be at least 1")
        if self.target_metric not in METRICS:
            object.__setattr__(self, "target_metric", "accuracy")

    @classmethod
    def from_settings(cls, settings: Settings) -> MonitoringPolicy:
        return cls(
            window=settings.monitoring_window,
            psi_threshold=settings.psi_alarm_threshold,
            min_labelled=settings.monitoring_min_labelled,
            target_metric=settings.target_metric,
            target=settings.target_threshold,
        )


# --- drift ---------------------------------------------------------------------------------------


def _check_reference(edges: Sequence[float], proportions: Sequence[float]) -> None:
    if len(edges) < 2 or len(proportions) != len(edges) - 1:
        raise ValueError(f"{len(edges)} edges need {max(len(edges) - 1, 1)} proportions, not {len(proportions)}")
    if any(b <= a for a, b in pairwise(edges)):
        raise ValueError("the reference edges must increase")
    if any(p < 0 or math.isnan(p) for p in proportions) or sum(proportions) <= 0:
        raise ValueError("the reference proportions must be non-negative and not all zero")


def bin_index(edges: Sequence[float], score: float) -> int:
    """The reference bin of a score: ``[edges[i], edges[i+1])``, the last bin closed; a score
    outside the edges falls in the nearest end bin."""
    return min(max(bisect_right(edges, score) - 1, 0), len(edges) - 2)


def bin_shares(edges: Sequence[float], scores: Iterable[float]) -> list[float]:
    """The share of the scores in each bin of ``edges`` (all zero for no scores).

    Raises:
        ValueError: fewer than two edges, or edges that do not increase; a NaN score.
    """
    if len(edges) < 2 or any(b <= a for a, b in pairwise(edges)):
        raise ValueError("need at least two increasing edges")
    counts = [0] * (len(edges) - 1)
    for score in scores:
        if math.isnan(score):
            raise ValueError("a score is NaN")
        counts[bin_index(edges, score)] += 1
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def psi(
    reference_edges: Sequence[float],
    reference_proportions: Sequence[float],
    scores: Sequence[float],
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of ``scores`` against the reference distribution:
    ``Σ (a − e) · ln(a / e)`` over the reference bins, ``a`` the scores' share of a bin and ``e`` the
    reference's (normalised to sum to 1); a share below ``epsilon`` counts as ``epsilon``. Never
    negative; 0 for the reference itself; above 0.25 is commonly read as a major shift.

    Raises:
        ValueError: no scores, a NaN score, or a malformed reference.
    """
    _check_reference(reference_edges, reference_proportions)
    if not scores:
        raise ValueError("the PSI needs at least one score")
    total = sum(reference_proportions)
    actual = bin_shares(reference_edges, scores)
    value = 0.0
    for a, e in zip(actual, reference_proportions, strict=True):
        a, e = max(a, epsilon), max(e / total, epsilon)
        value += (a - e) * math.log(a / e)
    return value


# --- figures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson 95 % interval and the number of studies behind it
    (``value`` and the bounds are ``None`` when ``n`` is 0)."""

    successes: int
    n: int
    value: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, successes: int, n: int) -> Rate:
        """Raises ValueError: ``successes`` outside ``0..n``."""
        if n == 0:
            if successes:
                raise ValueError(f"need 0 <= successes <= n, not {successes} of 0")
            return cls(0, 0, None, None, None)
        low, high = wilson_interval(successes, n)
        return cls(successes, n, successes / n, low, high)


@dataclass(frozen=True)
class Labelled:
    """One labelled study: whether the AI flagged it and whether it should have been flagged (the
    physician's label is not a normal class)."""

    flagged: bool
    should_flag: bool


@dataclass(frozen=True)
class Confusion:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @classmethod
    def of(cls, studies: Iterable[Labelled]) -> Confusion:
        tp = fp = tn = fn = 0
        for s in studies:
            if s.flagged and s.should_flag:
                tp += 1
            elif s.flagged:
                fp += 1
            elif s.should_flag:
                fn += 1
            else:
                tn += 1
        return cls(tp, fp, tn, fn)

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def rates(self) -> dict[str, Rate]:
        """Sensitivity (of the studies that should be flagged), specificity (of the others) and
        accuracy (of all), each with its interval and denominator."""
        return {
            "sensitivity": Rate.of(self.tp, self.tp + self.fn),
            "specificity": Rate.of(self.tn, self.tn + self.fp),
            "accuracy": Rate.of(self.tp + self.tn, self.n),
        }


def should_flag(label: str, normal_classes: Sequence[str]) -> bool:
    """The ground truth of a physician's label (not "not assessable"): flagged unless normal."""
    return label not in normal_classes


def rolling(studies: Sequence[Labelled], window: int) -> Confusion:
    """The confusion of the last ``window`` studies (``studies`` oldest first)."""
    return Confusion.of(studies[-window:] if window > 0 else [])


@dataclass(frozen=True)
class TrendPoint:
    """The rolling accuracy after the ``index``-th labelled study (1-based), over the last
    ``n`` (at most the window) studies up to it."""

    index: int
    value: float
    ci_low: float
    ci_high: float
    n: int


def accuracy_trend(studies: Sequence[Labelled], window: int, points: int = 60) -> list[TrendPoint]:
    """The rolling accuracy along the labelled studies (oldest first), at most ``points`` points
    evenly spaced, always ending with the last study (the figure shown now)."""
    total = len(studies)
    if total == 0 or points < 1:
        return []
    step = max(1, math.ceil(total / points))
    ends = sorted({*range(total, 0, -step)})
    correct = [int(s.flagged == s.should_flag) for s in studies]
    prefix = [0]
    for c in correct:
        prefix.append(prefix[-1] + c)
    out: list[TrendPoint] = []
    for end in ends:
        start = max(0, end - window)
        n = end - start
        rate = Rate.of(prefix[end] - prefix[start], n)
        assert rate.value is not None and rate.ci_low is not None and rate.ci_high is not None
        out.append(TrendPoint(end, rate.value, rate.ci_low, rate.ci_high, n))
    return out


# --- alarms --------------------------------------------------------------------------------------


def below_target(rate: Rate, policy: MonitoringPolicy) -> bool:
    """Whether a figure of the target metric raises an alarm: at least ``min_labelled`` studies
    behind it and even its Wilson upper bound below the target."""
    return rate.n >= policy.min_labelled and rate.ci_high is not None and rate.ci_high < policy.target


def psi_noise_floor(reference_n: int | None, n: int, bins: int = 10) -> float:
    """The PSI two samples of one distribution reach by chance 5 % of the time: PSI of ``bins``
    bins is about chi-square with ``bins - 1`` degrees of freedom times ``1/n_ref + 1/n``. A small
    reference (BUSI's ~100 validation images) makes it exceed the usual 0.25 with no drift at all."""
    if reference_n is None or reference_n <= 0 or n <= 0:
        return 0.0
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, bins - 1)) * (1 / reference_n + 1 / n)


def drifted(
    psi_value: float | None, n: int, policy: MonitoringPolicy, reference_n: int | None = None, bins: int = 10
) -> bool:
    """Whether a site's PSI raises an alarm: a full window of scores (``n >= window``) and a PSI
    above the threshold, and above the chance level for the reference's and the window's sizes
    over ``bins`` bins (:func:`psi_noise_floor`); ``None`` (no reference on the card) never alarms."""
    if psi_value is None or n < policy.window:
        return False
    return psi_value > max(policy.psi_threshold, psi_noise_floor(reference_n, n, bins))


def below_target_message(task: str, version: str, site: str | None, rate: Rate, policy: MonitoringPolicy) -> str:
    where = f"at {site}" if site is not None else "over all sites"
    assert rate.value is not None and rate.ci_low is not None and rate.ci_high is not None
    return (
        f"{task} model {version} {where}: in-service {policy.target_metric} {rate.value:.3f} "
        f"[95% CI {rate.ci_low:.3f}, {rate.ci_high:.3f}] on the last {rate.n} labelled studies is below the "
        f"target {policy.target:.2f}"
    )


def drift_message(task: str, version: str, site: str, psi_value: float, n: int, policy: MonitoringPolicy) -> str:
    return (
        f"{task} model {version} at {site}: the flag scores of the last {n} studies drifted from the "
        f"validation distribution (PSI {psi_value:.3f} > {policy.psi_threshold:.2f})"
    )
