"""The pure decisions of in-service monitoring: PSI, rolling figures with Wilson intervals, the
alarm conditions; tables and Hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.config import Settings
from prescreen.evaluation.metrics import wilson_interval
from prescreen.evaluation.monitoring import (
    Confusion,
    Labelled,
    MonitoringPolicy,
    Rate,
    accuracy_trend,
    below_target,
    bin_index,
    bin_shares,
    drifted,
    psi,
    rolling,
    should_flag,
)

EDGES = [i / 10 for i in range(11)]
UNIFORM = [0.1] * 10
POLICY = MonitoringPolicy(window=200, psi_threshold=0.25, min_labelled=30, target_metric="accuracy", target=0.95)


# --- PSI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "index"),
    [(0.0, 0), (0.05, 0), (0.1, 1), (0.999, 9), (1.0, 9), (-0.3, 0), (1.7, 9), (0.5, 5)],
)
def test_bin_index_closes_the_last_bin_and_clips_outside_scores(score: float, index: int) -> None:
    assert bin_index(EDGES, score) == index


def test_psi_of_the_reference_itself_is_zero() -> None:
    scores = [i / 10 + 0.05 for i in range(10)] * 7  # 7 per bin: the uniform reference exactly
    assert psi(EDGES, UNIFORM, scores) == pytest.approx(0.0, abs=1e-12)


def test_psi_by_hand() -> None:
    # two bins: reference 50/50, scores 80/20 → (0.8-0.5)ln(0.8/0.5) + (0.2-0.5)ln(0.2/0.5)
    expected = 0.3 * math.log(1.6) + (-0.3) * math.log(0.4)
    scores = [0.1] * 8 + [0.9] * 2
    assert psi([0.0, 0.5, 1.0], [0.5, 0.5], scores) == pytest.approx(expected)
    assert expected == pytest.approx(0.4159, abs=1e-4)


def test_psi_uses_an_epsilon_for_empty_bins_and_normalises_the_reference() -> None:
    # everything in a bin the reference never saw: large but finite
    value = psi([0.0, 0.5, 1.0], [1.0, 0.0], [0.9] * 10)
    assert math.isfinite(value) and value > 5
    # a reference given as counts (not summing to 1) means the same distribution
    assert psi(EDGES, [3] * 10, [0.05, 0.95]) == pytest.approx(psi(EDGES, UNIFORM, [0.05, 0.95]))


def test_a_far_shift_is_a_major_one() -> None:
    reference = [0.4, 0.3, 0.15, 0.08, 0.04, 0.02, 0.005, 0.003, 0.001, 0.001]  # mostly low scores
    assert psi(EDGES, reference, [0.95] * 100) > 0.25
    assert psi(EDGES, reference, [0.05] * 40 + [0.15] * 30 + [0.25] * 15 + [0.35] * 8 + [0.45] * 4 + [0.55] * 3) < 0.1


@pytest.mark.parametrize(
    ("edges", "proportions", "scores", "match"),
    [
        ([0.0], [], [0.1], "edges need"),
        ([0.0, 0.5, 1.0], [1.0], [0.1], "edges need"),
        ([0.0, 0.5, 0.5], [0.5, 0.5], [0.1], "increase"),
        ([0.0, 0.5, 1.0], [0.0, 0.0], [0.1], "not all zero"),
        ([0.0, 0.5, 1.0], [-0.1, 1.1], [0.1], "non-negative"),
        ([0.0, 0.5, 1.0], [0.5, 0.5], [], "at least one score"),
        ([0.0, 0.5, 1.0], [0.5, 0.5], [float("nan")], "NaN"),
    ],
)
def test_psi_refuses_what_it_cannot_measure(
    edges: list[float], proportions: list[float], scores: list[float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        psi(edges, proportions, scores)


unit_scores = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=300)
references = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=10, max_size=10).filter(lambda p: sum(p) > 0.01)


@settings(max_examples=200, deadline=None)
@given(references, unit_scores)
def test_psi_is_never_negative_and_ignores_order(reference: list[float], scores: list[float]) -> None:
    value = psi(EDGES, reference, scores)
    assert value >= 0
    assert psi(EDGES, reference, list(reversed(scores))) == pytest.approx(value)


@settings(max_examples=200, deadline=None)
@given(unit_scores)
def test_psi_of_a_sample_against_its_own_histogram_is_zero(scores: list[float]) -> None:
    assert psi(EDGES, bin_shares(EDGES, scores), scores) == pytest.approx(0.0, abs=1e-9)


# --- figures -------------------------------------------------------------------------------------


def labelled(tp: int = 0, fp: int = 0, tn: int = 0, fn: int = 0) -> list[Labelled]:
    return (
        [Labelled(True, True)] * tp
        + [Labelled(True, False)] * fp
        + [Labelled(False, False)] * tn
        + [Labelled(False, True)] * fn
    )


def test_confusion_and_rates_with_their_denominators() -> None:
    confusion = Confusion.of(labelled(tp=40, fp=5, tn=50, fn=10))
    assert (confusion.tp, confusion.fp, confusion.tn, confusion.fn, confusion.n) == (40, 5, 50, 10, 105)
    rates = confusion.rates()
    assert (rates["sensitivity"].successes, rates["sensitivity"].n) == (40, 50)
    assert (rates["specificity"].successes, rates["specificity"].n) == (50, 55)
    assert (rates["accuracy"].successes, rates["accuracy"].n) == (90, 105)
    assert rates["accuracy"].value == pytest.approx(90 / 105)
    assert (rates["accuracy"].ci_low, rates["accuracy"].ci_high) == pytest.approx(wilson_interval(90, 105))


def test_no_studies_give_no_figure() -> None:
    rate = Confusion().rates()["sensitivity"]
    assert (rate.n, rate.value, rate.ci_low, rate.ci_high) == (0, None, None, None)
    with pytest.raises(ValueError):
        Rate.of(1, 0)


@pytest.mark.parametrize(
    ("label", "normal", "flag"),
    [("normal", ("normal",), False), ("af", ("normal",), True), ("benign", ("normal", "benign"), False)],
)
def test_the_physician_label_decides_the_truth(label: str, normal: tuple[str, ...], flag: bool) -> None:
    assert should_flag(label, normal) is flag


def test_rolling_keeps_the_last_window() -> None:
    studies = labelled(tn=300) + labelled(fp=50)  # good for long, then bad
    assert rolling(studies, 100).rates()["accuracy"].value == pytest.approx(0.5)
    assert rolling(studies, 1000).n == 350


def test_accuracy_trend_ends_at_the_current_figure() -> None:
    studies = labelled(tn=90) + labelled(fp=30)
    trend = accuracy_trend(studies, window=50, points=10)
    assert len(trend) <= 10 + 1 and trend[-1].index == 120 and trend[-1].n == 50
    assert trend[-1].value == pytest.approx(20 / 50)
    assert [p.index for p in trend] == sorted(p.index for p in trend)
    assert trend[0].value == 1.0 and all(p.ci_low - 1e-9 <= p.value <= p.ci_high + 1e-9 for p in trend)
    assert accuracy_trend([], 50) == []


# --- alarms --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "n", "alarm"),
    [
        (25, 30, True),  # 0.833 [0.664, 0.927]
        (27, 30, False),  # 0.900 [0.744, 0.965]: could still reach 0.95
        (20, 29, False),  # too few studies, however bad
        (180, 200, True),  # 0.900 [0.851, 0.934]: more studies, a narrower interval
        (185, 200, False),  # 0.925 [0.880, 0.954]: the upper bound is still above the target
        (188, 200, False),  # 0.940 [0.898, 0.965]
        (0, 0, False),
    ],
)
def test_below_target_needs_enough_studies_and_an_upper_bound_under_the_target(
    correct: int, n: int, alarm: bool
) -> None:
    assert below_target(Rate.of(correct, n), POLICY) is alarm


@pytest.mark.parametrize(
    ("value", "n", "alarm"),
    [(0.3, 200, True), (0.25, 200, False), (0.9, 199, False), (None, 500, False), (0.26, 500, True)],
)
def test_drift_needs_a_full_window_and_a_psi_over_the_threshold(value: float | None, n: int, alarm: bool) -> None:
    assert drifted(value, n, POLICY) is alarm


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=400))
def test_fewer_correct_never_lifts_an_alarm(correct: int, extra: int) -> None:
    n = correct + extra
    if below_target(Rate.of(correct, n), POLICY) and correct > 0:
        assert below_target(Rate.of(correct - 1, n), POLICY)


def test_policy_from_settings_and_an_unknown_target_metric() -> None:
    settings_ = Settings(
        monitoring_window=50, psi_alarm_threshold=0.3, monitoring_min_labelled=10, target_metric="sensitivity"
    )
    policy = MonitoringPolicy.from_settings(settings_)
    assert (policy.window, policy.psi_threshold, policy.min_labelled, policy.target_metric, policy.target) == (
        50,
        0.3,
        10,
        "sensitivity",
        0.95,
    )
    assert MonitoringPolicy(target_metric="auroc").target_metric == "accuracy"
    with pytest.raises(ValueError):
        MonitoringPolicy(window=0)


def test_a_small_reference_raises_the_drift_bar_to_its_chance_level() -> None:
    from prescreen.evaluation.monitoring import psi_noise_floor

    # BUSI-sized reference (94 scores) against a 200-study window: chance alone reaches ~0.26
    assert psi_noise_floor(94, 200) == pytest.approx(16.919 * (1 / 94 + 1 / 200), rel=1e-3)
    assert drifted(0.26, 200, POLICY) and not drifted(0.26, 200, POLICY, reference_n=94)
    assert drifted(0.40, 200, POLICY, reference_n=94)
    assert drifted(0.26, 200, POLICY, reference_n=1024)  # a large reference: the usual 0.25
    # simulated: two samples of one distribution exceed the floor about 5 % of the time, not 30 %
    rng = np.random.default_rng(7)
    edges = [i / 10 for i in range(11)]
    false_alarms = 0
    for _ in range(400):
        ref = rng.beta(0.5, 0.8, 94)
        live = rng.beta(0.5, 0.8, 200)
        proportions = bin_shares(edges, ref.tolist())
        value = psi(edges, proportions, live.tolist())
        false_alarms += drifted(value, 200, POLICY, reference_n=94)
    assert false_alarms / 400 < 0.12
