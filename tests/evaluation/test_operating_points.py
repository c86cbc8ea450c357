"""Both operating points, the Wilson interval, calibration and the prevalence table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.evaluation.calibration import expected_calibration_error, fit_temperature, reliability
from prescreen.evaluation.evaluate import POINT_METRICS, at_operating_points
from prescreen.evaluation.metrics import binary_metrics, wilson_interval
from prescreen.evaluation.operating import at_prevalence, characterize, prevalence_table, score_reference
from prescreen.evaluation.threshold import SAFETY_SENSITIVITY, choose_balanced, choose_safety
from prescreen.models.calibration import apply_temperature
from prescreen.models.task import get_task


def youden(truth: np.ndarray, score: np.ndarray, t: float) -> float:
    m = binary_metrics(truth, score, t)
    return m["sensitivity"] + m["specificity"] - 1


def test_balanced_maximizes_youden_not_accuracy() -> None:
    # 90 % positives: flagging everything has accuracy 0.90 but J 0; the cut at 0.5 has J 0.8
    truth = np.array([True] * 90 + [False] * 10)
    score = np.concatenate([np.r_[np.full(80, 0.9), np.full(10, 0.1)], np.r_[np.full(9, 0.1), np.full(1, 0.9)]])
    t = choose_balanced(truth, score)
    assert 0.1 < t <= 0.9
    assert youden(truth, score, t) == pytest.approx(80 / 90 + 9 / 10 - 1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1, allow_nan=False)), min_size=4, max_size=60).filter(
        lambda rows: 0 < sum(t for t, _ in rows) < len(rows)
    )
)
def test_operating_point_properties(rows: list[tuple[bool, float]]) -> None:
    truth = np.array([t for t, _ in rows])
    score = np.array([s for _, s in rows])
    balanced = choose_balanced(truth, score)
    best = max(youden(truth, score, t) for t in np.r_[score, score.max() + 1, score.min() - 1])
    assert youden(truth, score, balanced) == pytest.approx(best)
    safety = choose_safety(truth, score, ceiling=balanced)
    assert safety <= balanced  # flags at least what the balanced point flags
    assert binary_metrics(truth, score, safety)["sensitivity"] >= SAFETY_SENSITIVITY or safety == balanced
    flagged_b, flagged_s = score >= balanced, score >= safety
    assert np.all(flagged_s[flagged_b])


def test_safety_is_the_highest_threshold_reaching_the_sensitivity() -> None:
    truth = np.array([True] * 20 + [False] * 20)
    score = np.r_[np.linspace(0.3, 1.0, 20), np.linspace(0.0, 0.7, 20)]
    safety = choose_safety(truth, score, ceiling=1.0)
    assert binary_metrics(truth, score, safety)["sensitivity"] >= 0.95
    # one step higher would miss a second positive of 20 (sensitivity 0.90)
    higher = np.sort(score[truth])[1]
    assert binary_metrics(truth, score, higher + 1e-9)["sensitivity"] < 0.95


def test_operating_points_need_both_classes() -> None:
    with pytest.raises(ValueError, match="both flagged and normal"):
        choose_balanced(np.array([True, True]), np.array([0.2, 0.8]))


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962)],
)
def test_wilson_interval_matches_published_values(successes: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_of_nothing_and_of_nonsense() -> None:
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_temperature_is_recovered_and_lowers_the_calibration_error() -> None:
    rng = np.random.default_rng(0)
    n, true_t = 4000, 2.5
    logits = rng.normal(0, 3, (n, 2))
    calibrated = apply_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1.0)
    labels = np.array([rng.choice(2, p=p) for p in calibrated])
    overconfident = apply_temperature(calibrated, 1 / true_t)  # sharpened: what an overfit net says
    t = fit_temperature(labels, overconfident)
    assert t == pytest.approx(true_t, rel=0.15)
    truth = labels == 1
    before = expected_calibration_error(truth, overconfident[:, 1])
    after = expected_calibration_error(truth, apply_temperature(overconfident, t)[:, 1])
    assert after < before and after < 0.03
    assert sum(row["count"] for row in reliability(truth, overconfident[:, 1])) == n


def test_temperature_one_changes_nothing_and_bad_temperatures_are_refused() -> None:
    p = np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-6)
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)


def test_accuracy_at_another_prevalence() -> None:
    row = at_prevalence(sensitivity=0.9, specificity=0.6, prevalence=0.1)
    assert row["accuracy"] == pytest.approx(0.1 * 0.9 + 0.9 * 0.6)
    assert row["ppv"] == pytest.approx(0.09 / (0.09 + 0.36), abs=1e-4)
    assert at_prevalence(0.9, 0.6, 0.7)["accuracy"] == pytest.approx(0.7 * 0.9 + 0.3 * 0.6)


def test_characterize_fills_everything_a_release_needs() -> None:
    task = get_task("chest-xray")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    p1 = np.clip(0.5 + (labels - 0.5) * 0.6 + rng.normal(0, 0.25, 300), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    found = characterize(task, labels, probs, "validation split (n=300)")
    assert set(found.operating_points) == {"balanced", "safety"}
    b, s = found.operating_points["balanced"], found.operating_points["safety"]
    assert s.threshold <= b.threshold and s.sensitivity is not None and s.sensitivity >= 0.95
    assert s.positives == int(labels.sum()) and s.sensitivity_wilson_low is not None
    assert s.sensitivity_wilson_low < s.sensitivity
    assert sum(found.score_reference.proportions) == pytest.approx(1.0, abs=1e-4)
    rows = found.shift["prevalence"]
    assert isinstance(rows, list) and {r["prevalence"] for r in rows} >= {0.1, 0.3, 0.5, 0.7}
    assert "perturbations" not in found.shift  # no model given, no perturbation table


def test_prevalence_table_and_score_reference_shapes() -> None:
    ref = score_reference(np.array([0.0, 0.05, 0.95, 1.0]), "x")
    assert ref.n == 4 and len(ref.edges) == len(ref.proportions) + 1
    assert ref.proportions[0] == 0.5 and ref.proportions[-1] == 0.5
    assert prevalence_table({}, 0.5) == []


def test_figures_at_each_operating_point_match_the_decision_there() -> None:
    """A new site's data at both points: each point's figures are those of its own threshold, the
    lower (safety) threshold flags at least as much, finds at least as many positives, and its
    balanced accuracy is the mean of its sensitivity and specificity."""
    rng = np.random.default_rng(3)
    truth = rng.random(400) < 0.3
    score = np.clip(np.where(truth, 0.65, 0.35) + rng.normal(0, 0.2, 400), 0, 1)
    points = at_operating_points(truth, score, {"balanced": 0.5, "safety": 0.3}, resamples=200)
    assert list(points) == ["balanced", "safety"]
    for name, threshold in (("balanced", 0.5), ("safety", 0.3)):
        p = points[name]
        direct = binary_metrics(truth, score, threshold)
        assert p.threshold == threshold and p.flagged_share == pytest.approx(np.mean(score >= threshold))
        assert list(p.metrics) == list(POINT_METRICS)
        for k in ("sensitivity", "specificity", "accuracy"):
            assert p.metrics[k].value == pytest.approx(direct[k])
        b = p.metrics["balanced_accuracy"]
        assert b.value == pytest.approx((direct["sensitivity"] + direct["specificity"]) / 2)
        assert b.ci_low is not None and b.ci_high is not None and b.ci_low <= b.value <= b.ci_high
        assert b.ci_high - b.ci_low > 0.01  # 400 studies: an interval, not a point
    safety, balanced = points["safety"], points["balanced"]
    assert safety.flagged_share > balanced.flagged_share
    figures = {name: {k: p.metrics[k].value or 0.0 for k in POINT_METRICS} for name, p in points.items()}
    assert figures["safety"]["sensitivity"] > figures["balanced"]["sensitivity"]
    assert figures["safety"]["specificity"] < figures["balanced"]["specificity"]
