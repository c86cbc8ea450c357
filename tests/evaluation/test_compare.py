"""The promotion gate's pure parts: paired comparison of two models' flags and the verdict."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.evaluation.compare import (
    ACCURACY_MARGIN,
    COMPARED,
    MARGINS,
    SENSITIVITY_MARGIN,
    Comparison,
    Interval,
    compare_flags,
    flag_rates,
    gate,
)

Flags = npt.NDArray[np.bool_]
FAST = settings(max_examples=100, deadline=None)


@st.composite
def records(draw: st.DrawFn, min_size: int = 2, max_size: int = 120) -> tuple[Flags, Flags]:
    """Truth and one model's flags on the same records."""
    n = draw(st.integers(min_size, max_size))
    truth = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    flags = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return truth, flags


def _comparison(delta_low: dict[str, float]) -> Comparison:
    """A comparison whose Δ intervals have the given lower bounds (the rest does not matter to the gate)."""
    same = {k: Interval(0.8, 0.75, 0.85) for k in COMPARED}
    delta = {k: Interval(max(delta_low.get(k, 0.0), 0.0), delta_low.get(k, 0.0), 0.05) for k in COMPARED}
    return Comparison(n=100, positives=40, resamples=1000, seed=0, candidate=same, active=same, delta=delta)


# --------------------------------------------------------------------------- flag_rates


def test_flag_rates_by_hand() -> None:
    truth = np.array([True, True, True, False, False])
    flags = np.array([True, False, True, True, False])
    rates = flag_rates(truth, flags)
    assert rates == {"accuracy": 3 / 5, "sensitivity": 2 / 3, "specificity": 1 / 2}


def test_flag_rates_undefined_without_positives() -> None:
    rates = flag_rates(np.zeros(4, dtype=bool), np.array([True, False, False, False]))
    assert math.isnan(rates["sensitivity"]) and rates["specificity"] == 0.75 and rates["accuracy"] == 0.75


def test_shapes_and_resamples_are_checked() -> None:
    truth = np.array([True, False, True])
    with pytest.raises(ValueError, match="same length"):
        compare_flags(truth, truth[:2], truth)
    with pytest.raises(ValueError, match="same length"):
        compare_flags(truth, truth, truth[:2])
    with pytest.raises(ValueError, match="at least 1000"):
        compare_flags(truth, truth, truth, resamples=999)
    with pytest.raises(ValueError, match="non-empty"):
        compare_flags(np.zeros(0, dtype=bool), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))


# --------------------------------------------------------------------------- properties of the comparison


@FAST
@given(records())
def test_identical_models_differ_by_exactly_zero_and_pass(data: tuple[Flags, Flags]) -> None:
    truth, flags = data
    c = compare_flags(truth, flags, flags.copy())
    for metric in COMPARED:
        d = c.delta[metric]
        if math.isnan(c.candidate[metric].value):  # e.g. sensitivity without a flagged record
            assert math.isnan(d.value) and math.isnan(d.low)
        else:
            assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)
            assert c.candidate[metric] == c.active[metric]
    verdict = gate(c, [])
    assert verdict.passed == bool(truth.any()), verdict.reasons  # no flagged record: sensitivity not shown


@FAST
@given(records(), st.data())
def test_swapping_the_models_mirrors_the_difference(data: tuple[Flags, Flags], more: st.DataObject) -> None:
    truth, a = data
    b = np.asarray(more.draw(st.lists(st.booleans(), min_size=len(a), max_size=len(a))), dtype=bool)
    ab, ba = compare_flags(truth, a, b, seed=3), compare_flags(truth, b, a, seed=3)
    for metric in COMPARED:
        x, y = ab.delta[metric], ba.delta[metric]
        if math.isnan(x.value):
            assert math.isnan(y.value)
            continue
        assert x.value == pytest.approx(-y.value, abs=1e-12)
        assert x.low == pytest.approx(-y.high, abs=1e-9) and x.high == pytest.approx(-y.low, abs=1e-9)
        assert ab.candidate[metric] == ba.active[metric]


@FAST
@given(records(), st.integers(0, 2**31 - 1))
def test_intervals_hold_their_point_and_are_reproducible(data: tuple[Flags, Flags], seed: int) -> None:
    truth, flags = data
    other = np.roll(flags, 1)
    c = compare_flags(truth, flags, other, seed=seed)
    assert c.as_dict() == compare_flags(truth, flags, other, seed=seed).as_dict()
    assert c.n == len(truth) and c.positives == int(truth.sum())
    for side in (c.candidate, c.active, c.delta):
        for v in side.values():
            if not math.isnan(v.value):
                assert v.low <= v.value <= v.high


@FAST
@given(records(min_size=10), st.data())
def test_a_candidate_right_wherever_the_active_is_right_never_fails(
    data: tuple[Flags, Flags], more: st.DataObject
) -> None:
    truth, active = data
    wrong = np.flatnonzero(active != truth)
    fixed = more.draw(st.lists(st.sampled_from(list(wrong)), unique=True)) if wrong.size else []
    candidate = active.copy()
    candidate[fixed] = truth[fixed]  # correct on a superset of the records the active model gets right
    c = compare_flags(truth, candidate, active)
    assert c.delta["accuracy"].low >= 0.0
    if truth.any():
        assert c.delta["sensitivity"].low >= 0.0
        assert gate(c, []).passed


@FAST
@given(st.integers(100, 400), st.floats(0.1, 0.5), st.integers(0, 10_000))
def test_a_candidate_wrong_on_many_more_records_is_refused(n: int, share: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    truth[:2] = [True, False]
    active = truth.copy()  # right on every record
    k = max(1, int(share * n))
    candidate = truth.copy()
    candidate[rng.choice(n, k, replace=False)] ^= True
    c = compare_flags(truth, candidate, active, seed=seed)
    assert c.delta["accuracy"].value == pytest.approx(-k / n)
    verdict = gate(c, [])
    assert not verdict.passed
    assert any(r.startswith("Δaccuracy lower 95 % bound") for r in verdict.reasons)


def test_paired_is_tighter_than_two_independent_samples() -> None:
    """Two models that agree on 95 % of 400 records: the paired interval of Δ is far narrower than the
    candidate's own interval (independent samples would add the two widths)."""
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.4
    active = np.where(rng.random(400) < 0.8, truth, ~truth)
    candidate = active.copy()
    candidate[rng.choice(400, 20, replace=False)] ^= True
    c = compare_flags(truth, candidate, active)
    delta_width = c.delta["accuracy"].high - c.delta["accuracy"].low
    own_width = c.candidate["accuracy"].high - c.candidate["accuracy"].low
    assert delta_width < 0.6 * own_width


def test_interval_width_matches_the_normal_approximation() -> None:
    """The resampling itself: for a proportion, the bootstrap interval is close to ±1.96·√(p(1−p)/n)."""
    rng = np.random.default_rng(7)
    truth = rng.random(2000) < 0.4
    candidate = np.where(rng.random(2000) < 0.7, truth, ~truth)
    c = compare_flags(truth, candidate, truth, resamples=2000)
    p = c.candidate["accuracy"].value
    half = 1.959964 * math.sqrt(p * (1 - p) / 2000)
    assert c.candidate["accuracy"].low == pytest.approx(p - half, abs=0.006)
    assert c.candidate["accuracy"].high == pytest.approx(p + half, abs=0.006)
    assert c.resamples == 2000 and c.active["accuracy"] == Interval(1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- the verdict


@pytest.mark.parametrize(
    ("lows", "card_missing", "passed", "reason_starts"),
    [
        ({"accuracy": 0.0, "sensitivity": 0.0}, [], True, []),
        ({"accuracy": ACCURACY_MARGIN, "sensitivity": SENSITIVITY_MARGIN}, [], True, []),  # at the margin: passes
        ({"accuracy": ACCURACY_MARGIN - 1e-9, "sensitivity": 0.0}, [], False, ["Δaccuracy lower"]),
        ({"accuracy": 0.0, "sensitivity": SENSITIVITY_MARGIN - 1e-9}, [], False, ["Δsensitivity lower"]),
        ({"accuracy": -0.015, "sensitivity": -0.015}, [], False, ["Δaccuracy lower"]),  # margins differ
        ({"accuracy": -0.2, "sensitivity": -0.3}, [], False, ["Δaccuracy lower", "Δsensitivity lower"]),
        ({"accuracy": 0.0, "sensitivity": float("nan")}, [], False, ["Δsensitivity cannot be measured"]),
        ({"accuracy": 0.1, "sensitivity": 0.1}, ["calibration"], False, ["the candidate's model card is incomplete"]),
        ({"specificity": -0.5}, [], True, []),  # specificity is shown, not gated
    ],
)
def test_gate_table(lows: dict[str, float], card_missing: list[str], passed: bool, reason_starts: list[str]) -> None:
    verdict = gate(_comparison(lows), card_missing)
    assert verdict.passed is passed
    assert [r[: len(s)] for r, s in zip(verdict.reasons, reason_starts, strict=True)] == reason_starts


def test_gate_names_what_the_card_lacks_and_keeps_the_figures() -> None:
    verdict = gate(_comparison({"accuracy": -0.3}), ["balanced", "safety", "calibration"])
    assert not verdict.passed
    assert verdict.reasons[-1] == "the candidate's model card is incomplete: it lacks balanced, safety, calibration"
    assert verdict.figures["card_missing"] == ["balanced", "safety", "calibration"]
    assert verdict.figures["margins"] == MARGINS
    assert verdict.figures["comparison"]["delta"]["accuracy"]["low"] == -0.3


def test_without_an_active_model_only_the_card_decides() -> None:
    assert gate(None, []).passed and gate(None, []).figures["comparison"] is None
    refused = gate(None, ["prevalence table"])
    assert not refused.passed and "prevalence table" in refused.reasons[0]


def test_figures_are_json_safe() -> None:
    import json

    truth = np.zeros(20, dtype=bool)  # no flagged record: sensitivity is NaN
    truth[0] = False
    c = compare_flags(truth, np.zeros(20, dtype=bool), np.zeros(20, dtype=bool))
    text = json.dumps(gate(c, []).figures, allow_nan=False)
    assert '"sensitivity": {"value": null' in text


@pytest.mark.parametrize(
    ("card", "measured", "positives", "refused"),
    [
        (0.97, 0.95, 40, []),
        (0.97, 0.90, 40, []),  # at the floor: kept
        (0.97, 0.875, 40, ["on these records is 0.875 (40 flagged-class records), below 0.90"]),
        (0.85, 0.95, 40, ["the card's safety-point sensitivity 0.850 is below 0.90"]),
        (None, 0.95, 40, []),  # an older card without the point: measured only
        (0.97, None, 0, ["cannot be measured"]),
    ],
)
def test_the_gate_refuses_a_safety_point_that_misses_the_flagged_class(
    card: float | None, measured: float | None, positives: int, refused: list[str]
) -> None:
    from prescreen.evaluation.compare import SafetyCheck

    verdict = gate(None, [], safety=SafetyCheck(card, measured, positives))
    assert verdict.passed is (not refused)
    assert len(verdict.reasons) == len(refused)
    for reason, expected in zip(verdict.reasons, refused, strict=True):
        assert expected in reason
    assert verdict.figures["safety"] == {"card": card, "measured": measured, "positives": positives, "floor": 0.9}
