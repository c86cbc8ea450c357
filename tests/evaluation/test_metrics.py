"""Screening metrics, bootstrap CIs, threshold choice and ``evaluate_probs``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from prescreen.evaluation.evaluate import evaluate_probs, flag_truth, predicted_classes
from prescreen.evaluation.metrics import (
    BINARY_METRICS,
    binary_metrics,
    bootstrap_ci,
    challenge_f1,
    multiclass_confusion,
)
from prescreen.evaluation.threshold import choose_threshold
from prescreen.models.task import get_task


def _random_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.35
    score = np.clip(0.5 * truth + rng.normal(0.25, 0.25, n), 0.0, 1.0)
    return truth, score


# --- binary_metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_metrics_match_sklearn(threshold: float) -> None:
    truth, score = _random_binary(500, seed=1)
    pred = score >= threshold
    m = binary_metrics(truth, score, threshold)
    assert set(m) == set(BINARY_METRICS)
    assert m["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(truth, pred))
    assert m["specificity"] == pytest.approx(recall_score(truth, pred, pos_label=False))
    assert m["ppv"] == pytest.approx(precision_score(truth, pred))
    assert m["npv"] == pytest.approx(precision_score(truth, pred, pos_label=False))
    assert m["f1"] == pytest.approx(f1_score(truth, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(truth, score))


def test_binary_metrics_threshold_is_inclusive() -> None:
    m = binary_metrics(np.array([True, False]), np.array([0.5, 0.49]), 0.5)
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == 1.0


def test_binary_metrics_one_class_gives_nan_auroc() -> None:
    truth = np.zeros(20, dtype=bool)
    score = np.linspace(0, 1, 20)
    m = binary_metrics(truth, score, 0.5)
    assert math.isnan(m["auroc"])
    assert math.isnan(m["sensitivity"])  # no positives
    assert m["specificity"] == pytest.approx(10 / 20)
    assert m["accuracy"] == pytest.approx(10 / 20)


# --- bootstrap_ci --------------------------------------------------------------------------


def _accuracy_statistic(correct: np.ndarray):  # type: ignore[no-untyped-def]
    return lambda i: {"accuracy": float(np.mean(correct[i]))}


def test_bootstrap_reproducible_with_same_seed() -> None:
    correct = np.random.default_rng(0).random(300) < 0.8
    a = bootstrap_ci(_accuracy_statistic(correct), len(correct), resamples=200, seed=5)
    b = bootstrap_ci(_accuracy_statistic(correct), len(correct), resamples=200, seed=5)
    c = bootstrap_ci(_accuracy_statistic(correct), len(correct), resamples=200, seed=6)
    assert a == b
    assert a != c


def test_bootstrap_interval_contains_point_estimate() -> None:
    correct = np.random.default_rng(1).random(2000) < 0.9
    point = float(correct.mean())
    low, high = bootstrap_ci(_accuracy_statistic(correct), len(correct), resamples=200, seed=0)["accuracy"]
    assert low < point < high
    # binomial standard error is about 0.0067, so the 95 % interval is about ±0.013
    assert 0.005 < point - low < 0.025
    assert 0.005 < high - point < 0.025


def test_bootstrap_narrower_with_more_data() -> None:
    rng = np.random.default_rng(2)
    small = rng.random(100) < 0.8
    large = rng.random(5000) < 0.8
    lo_s, hi_s = bootstrap_ci(_accuracy_statistic(small), len(small), resamples=200)["accuracy"]
    lo_l, hi_l = bootstrap_ci(_accuracy_statistic(large), len(large), resamples=200)["accuracy"]
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3


def test_bootstrap_level_controls_width() -> None:
    correct = np.random.default_rng(3).random(500) < 0.7
    lo95, hi95 = bootstrap_ci(_accuracy_statistic(correct), 500, resamples=300, level=0.95)["accuracy"]
    lo50, hi50 = bootstrap_ci(_accuracy_statistic(correct), 500, resamples=300, level=0.50)["accuracy"]
    assert lo95 < lo50 < hi50 < hi95


def test_bootstrap_leaves_out_nan_resamples() -> None:
    def stat(i: np.ndarray) -> dict[str, float]:
        return {"always_nan": float("nan"), "size": float(len(i))}

    out = bootstrap_ci(stat, 10, resamples=50)
    assert all(math.isnan(v) for v in out["always_nan"])
    assert out["size"] == (10.0, 10.0)


def test_bootstrap_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(lambda i: {"x": 0.0}, 0, resamples=10)


# --- multi-class figures -------------------------------------------------------------------


def _random_multiclass(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 4, n))
    return labels.astype(np.int64), predicted.astype(np.int64)


def test_challenge_f1_is_mean_f1_of_scored_classes() -> None:
    labels, predicted = _random_multiclass(400, seed=4)
    scored = [0, 1, 2]
    per_class = f1_score(labels, predicted, labels=scored, average=None)
    assert challenge_f1(labels, predicted, scored) == pytest.approx(float(np.mean(per_class)))
    manual = []
    for c in scored:
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        manual.append(2 * tp / (2 * tp + fp + fn))
    assert challenge_f1(labels, predicted, scored) == pytest.approx(float(np.mean(manual)))


def test_challenge_f1_ignores_unscored_class() -> None:
    labels = np.array([0, 1, 2, 3, 3, 3], dtype=np.int64)
    perfect_scored = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)  # class 3 all wrong
    f1_all = f1_score(labels, perfect_scored, labels=[0, 1, 2, 3], average=None, zero_division=0)
    assert challenge_f1(labels, perfect_scored, [0, 1, 2]) == pytest.approx(np.mean(f1_all[:3]))
    assert challenge_f1(labels, perfect_scored, [0, 1, 2]) < 1.0  # false positives still count
    assert challenge_f1(labels, labels, [0, 1, 2]) == 1.0


def test_multiclass_confusion_matches_sklearn() -> None:
    labels, predicted = _random_multiclass(300, seed=5)
    cm = multiclass_confusion(labels, predicted, 4)
    assert cm == confusion_matrix(labels, predicted, labels=[0, 1, 2, 3]).tolist()
    assert all(isinstance(v, int) for row in cm for v in row)


def test_multiclass_confusion_keeps_absent_classes() -> None:
    cm = multiclass_confusion(np.array([0, 0, 1]), np.array([0, 1, 1]), 4)
    assert cm == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


# --- choose_threshold ----------------------------------------------------------------------


def test_choose_threshold_known_best() -> None:
    score = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9])
    truth = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    # only a threshold in (0.3, 0.45] makes a single error (0.6); every other threshold makes more
    t = choose_threshold(truth, score)
    assert 0.3 < t <= 0.45
    assert binary_metrics(truth, score, t)["accuracy"] == pytest.approx(8 / 9)


def test_choose_threshold_tie_goes_to_sensitivity() -> None:
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    truth = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    # (0.3, 0.4]: 7/8, sensitivity 1;  (0.6, 0.7]: 7/8, sensitivity 0.75
    t = choose_threshold(truth, score)
    assert 0.3 < t <= 0.4


def test_choose_threshold_separable_data() -> None:
    rng = np.random.default_rng(6)
    neg = rng.uniform(0.0, 0.4, 100)
    pos = rng.uniform(0.6, 1.0, 60)
    score = np.concatenate([neg, pos])
    truth = np.concatenate([np.zeros(100, bool), np.ones(60, bool)])
    t = choose_threshold(truth, score)
    assert neg.max() < t <= pos.min()
    assert binary_metrics(truth, score, t)["accuracy"] == 1.0


def test_choose_threshold_empty_raises() -> None:
    with pytest.raises(ValueError, match="no data"):
        choose_threshold(np.array([], dtype=bool), np.array([]))


# --- evaluate_probs ------------------------------------------------------------------------


def _synthetic_probs(n: int, skill: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels over 4 classes and probabilities that put ``skill`` extra mass on the true class."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=n, p=[0.55, 0.15, 0.25, 0.05]).astype(np.int64)
    probs = rng.dirichlet(np.ones(4), size=n) * (1 - skill)
    probs[np.arange(n), labels] += skill
    return labels, probs.astype(np.float32)


def _evaluate(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5):  # type: ignore[no-untyped-def]
    task = get_task("ecg-rhythm")
    return evaluate_probs(
        task,
        labels,
        probs,
        threshold,
        split="held-out test split",
        dataset_path="/data/x",
        dataset_digest="abc",
        resamples=200,
        seed=0,
    )


@pytest.mark.parametrize(("skill", "seed"), [(0.3, 0), (0.6, 1), (0.9, 1)])
def test_evaluate_probs_consistent(skill: float, seed: int) -> None:
    labels, probs = _synthetic_probs(400, skill, seed)
    ev = _evaluate(labels, probs)
    assert ev.n == 400
    assert set(ev.metrics) == set(BINARY_METRICS)
    for name, m in ev.metrics.items():
        assert m.value is not None, name
        assert m.ci_low is not None and m.ci_high is not None, name
        assert m.ci_low <= m.value <= m.ci_high, name
        if 0.0 < m.value < 1.0:  # a real spread, not a degenerate interval
            assert m.ci_low < m.ci_high, name
    accuracy = ev.metrics["accuracy"].value
    assert ev.target.metric == "accuracy"
    assert ev.target.threshold == 0.95
    assert ev.target.met == (accuracy >= 0.95)
    assert ev.confusion is not None
    assert np.asarray(ev.confusion).shape == (4, 4)
    assert int(np.sum(ev.confusion)) == 400
    assert ev.challenge_f1 is not None and 0.0 <= ev.challenge_f1 <= 1.0
    assert ev.when is not None


def test_evaluate_probs_point_values_match_binary_metrics() -> None:
    task = get_task("ecg-rhythm")
    labels, probs = _synthetic_probs(300, 0.5, 2)
    ev = _evaluate(labels, probs, threshold=0.4)
    truth = labels != 0
    score = 1.0 - probs[:, 0]
    expected = binary_metrics(truth, score, 0.4)
    for k, v in expected.items():
        assert ev.metrics[k].value == pytest.approx(v, abs=1e-6)
    np.testing.assert_array_equal(flag_truth(task, labels), truth)
    predicted = predicted_classes(task, probs, 0.4)
    # the class matrix agrees with the flag: a flagged item is never reported as normal
    assert np.all((predicted != 0) == (score >= 0.4))
    assert ev.confusion == confusion_matrix(labels, predicted, labels=[0, 1, 2, 3]).tolist()


def test_evaluate_probs_target_met_and_missed() -> None:
    good = _evaluate(*_synthetic_probs(400, 0.97, 3))
    bad = _evaluate(*_synthetic_probs(400, 0.2, 4))
    assert good.metrics["accuracy"].value is not None and good.metrics["accuracy"].value >= 0.95
    assert good.target.met is True
    assert bad.metrics["accuracy"].value is not None and bad.metrics["accuracy"].value < 0.95
    assert bad.target.met is False


def test_evaluate_probs_single_class_has_no_auroc() -> None:
    labels = np.zeros(50, dtype=np.int64)  # all normal
    probs = np.tile(np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32), (50, 1))
    ev = _evaluate(labels, probs)
    assert ev.metrics["auroc"].value is None
    assert ev.metrics["auroc"].ci_low is None
    assert ev.metrics["sensitivity"].value is None
    assert ev.metrics["specificity"].value == 1.0
