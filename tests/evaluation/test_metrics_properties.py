"""Property tests of the screening metrics and the bootstrap against brute-force oracles."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.evaluation.evaluate import at_operating_points, evaluate_probs
from prescreen.evaluation.metrics import (
    BINARY_METRICS,
    auroc,
    binary_metrics,
    bootstrap_ci,
    challenge_f1,
    multiclass_confusion,
)
from prescreen.evaluation.report import evaluation_json, write_report
from prescreen.models.task import get_task

FAST = settings(max_examples=150, deadline=None)

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]

PROB = st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]), st.floats(0.0, 1.0))
ANY = st.one_of(PROB, st.floats(allow_nan=False), st.sampled_from([-5e-324, 5e-324, 1e300]))


@st.composite
def labelled(draw: st.DrawFn, scores: st.SearchStrategy[float] = PROB, min_size: int = 0) -> tuple[Bools, Floats]:
    """Labels and scores of equal length."""
    n = draw(st.integers(min_size, 40))
    truth = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    score = draw(st.lists(scores, min_size=n, max_size=n))
    return np.asarray(truth, dtype=bool), np.asarray(score, dtype=np.float64)


def _same(actual: float, expected: float) -> bool:
    return math.isnan(expected) if math.isnan(actual) else actual == expected


def _count_oracle(truth: Bools, score: Floats, threshold: float) -> dict[str, float]:
    """The metrics by counting items one by one."""
    tp = tn = fp = fn = 0
    for t, s in zip(truth.tolist(), score.tolist(), strict=True):
        flagged = s >= threshold
        tp += flagged and t
        tn += not flagged and not t
        fp += flagged and not t
        fn += not flagged and t

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {
        "accuracy": ratio(tp + tn, len(truth)),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def _mann_whitney(truth: Bools, score: Floats) -> float:
    """P(score of a positive > score of a negative), ties counting one half, over all pairs."""
    pos, neg = score[truth].tolist(), score[~truth].tolist()
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


# --- binary_metrics --------------------------------------------------------------------------------------------


@FAST
@given(labelled(), st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 0.25, 0.5, 1.0])))
def test_flag_metrics_equal_count_oracle(data: tuple[Bools, Floats], threshold: float) -> None:
    truth, score = data
    m = binary_metrics(truth, score, threshold)
    assert set(m) == set(BINARY_METRICS)
    for key, expected in _count_oracle(truth, score, threshold).items():
        assert _same(m[key], expected), key
        assert math.isnan(m[key]) or 0.0 <= m[key] <= 1.0, key


@FAST
@given(labelled(min_size=1), st.data())
def test_threshold_is_inclusive(data: tuple[Bools, Floats], pick: st.DataObject) -> None:
    """A study scoring exactly the threshold is flagged."""
    truth, score = data
    i = pick.draw(st.integers(0, len(score) - 1))
    m = binary_metrics(truth, score, float(score[i]))
    for key, expected in _count_oracle(truth, score, float(score[i])).items():
        assert _same(m[key], expected), key


@FAST
@given(labelled())
def test_auroc_equals_pairwise_mann_whitney(data: tuple[Bools, Floats]) -> None:
    truth, score = data
    expected = _mann_whitney(truth, score)
    assert _same(binary_metrics(truth, score, 0.5)["auroc"], expected)
    assert _same(auroc(truth, score), expected)


@FAST
@given(labelled(ANY))
def test_auroc_of_any_finite_scores(data: tuple[Bools, Floats]) -> None:
    truth, score = data
    assert _same(auroc(truth, score), _mann_whitney(truth, score))


@FAST
@given(labelled(st.sampled_from([-math.inf, 0.0, 0.5, 1.0, math.inf])))
def test_auroc_of_infinite_scores(data: tuple[Bools, Floats]) -> None:
    """A logit of ±inf still ranks: it does not crash the AUROC."""
    truth, score = data
    assert _same(auroc(truth, score), _mann_whitney(truth, score))


MONOTONE: list[Callable[[Floats], Floats]] = [
    lambda x: 3.0 * x - 7.0,
    lambda x: x**3,
    lambda x: np.exp(x / 4.0),
    lambda x: np.arctan(x),
    lambda x: 1.0 / (1.0 + np.exp(-x)),
]


@FAST
@given(labelled(st.integers(-20, 20).map(float)), st.sampled_from(MONOTONE))
def test_auroc_invariant_under_monotone_transform(
    data: tuple[Bools, Floats], transform: Callable[[Floats], Floats]
) -> None:
    truth, score = data
    assert _same(auroc(truth, transform(score)), auroc(truth, score))


@FAST
@given(labelled(ANY))
def test_auroc_depends_only_on_ranks(data: tuple[Bools, Floats]) -> None:
    truth, score = data
    dense_rank = np.unique(score, return_inverse=True)[1].astype(np.float64)
    assert _same(auroc(truth, dense_rank), auroc(truth, score))


@FAST
@given(labelled())
def test_auroc_of_negated_scores_or_flipped_labels_is_complement(data: tuple[Bools, Floats]) -> None:
    truth, score = data
    a = auroc(truth, score)
    if math.isnan(a):
        assert math.isnan(auroc(truth, -score))
        assert math.isnan(auroc(~truth, score))
    else:
        assert 0.0 <= a <= 1.0
        assert auroc(truth, -score) == pytest.approx(1.0 - a, abs=1e-12)
        assert auroc(~truth, score) == pytest.approx(1.0 - a, abs=1e-12)


@FAST
@given(st.booleans(), st.lists(PROB, min_size=0, max_size=40), st.floats(-0.5, 1.5))
def test_one_class_set_has_nan_auroc_and_no_crash(label: bool, scores: list[float], threshold: float) -> None:
    truth = np.full(len(scores), label)
    score = np.asarray(scores, dtype=np.float64)
    m = binary_metrics(truth, score, threshold)
    assert math.isnan(m["auroc"])
    assert math.isnan(auroc(truth, score))
    for key, expected in _count_oracle(truth, score, threshold).items():
        assert _same(m[key], expected), key


@FAST
@given(labelled(st.floats(0.0, 1.0, width=32)), st.floats(0.0, 1.0, width=32))
def test_input_types_do_not_matter(data: tuple[Bools, Floats], threshold: float) -> None:
    """0/1 integer labels, plain lists and float32 scores (as ``Task.flag_scores`` returns) give the same metrics."""
    truth, score = data
    m = binary_metrics(truth, score, threshold)
    for other in (
        binary_metrics(truth.astype(np.int64), score, threshold),
        binary_metrics(truth.tolist(), score.tolist(), threshold),
        binary_metrics(truth, score.astype(np.float32), threshold),
    ):
        assert all(_same(other[k], m[k]) for k in BINARY_METRICS)


def test_perfect_and_reversed_ranking() -> None:
    truth = np.array([False, False, True, True])
    assert auroc(truth, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(truth, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(truth, np.full(4, 0.5)) == 0.5


@pytest.mark.parametrize(
    ("truth", "score", "message"),
    [
        ([True, False], [0.5], "same length"),
        ([True], [0.2, 0.3], "same length"),
        ([[True]], [[0.2]], "1-D"),
        ([True, False], [math.nan, 0.5], "NaN"),
    ],
)
def test_bad_input_raises(truth: list[bool], score: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metrics(np.asarray(truth, dtype=bool), np.asarray(score), 0.5)
    with pytest.raises(ValueError, match=message):
        auroc(np.asarray(truth, dtype=bool), np.asarray(score))


@pytest.mark.parametrize("kind", ["normal only", "abnormal only", "both"])
def test_evaluation_and_report_cope_with_any_class_mix(kind: str, tmp_path: Path) -> None:
    """evaluate_probs, the JSON document and the report on one class (AUROC n/a) or both: no crash, no warning."""
    task = get_task("ecg-rhythm")
    labels = np.asarray({"normal only": [0] * 30, "abnormal only": [1] * 30, "both": [0, 1, 2] * 10}[kind], np.int64)
    probs = np.tile(np.array([0.3, 0.5, 0.1, 0.1], dtype=np.float32), (30, 1))
    probs[::3] = [0.7, 0.1, 0.1, 0.1]
    truth = labels != 0
    score = task.flag_scores(probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = evaluate_probs(
            task,
            labels,
            probs,
            0.5,
            split="test",
            dataset_path="/x",
            dataset_digest="0123456789abcdef" * 4,
            resamples=50,
        )
        points = at_operating_points(truth, score, {"balanced": 0.5, "safety": 0.4}, resamples=50)
        doc = evaluation_json(
            task.name, {"name": "m", "version": "1"}, ev, list(task.classes), 0.5, 0, points, float(truth.mean())
        )
        folder = tmp_path / "new" / "folder"
        path = write_report(folder, doc, truth, score)
    if kind == "both":
        assert ev.metrics["auroc"].value == 1.0
    else:
        assert ev.metrics["auroc"].value is None
        assert ev.metrics["auroc"].ci_low is None and ev.metrics["auroc"].ci_high is None
        assert "| AUROC | n/a | [n/a, n/a] |" in path.read_text()
        # one class: sensitivity or specificity is undefined, and so is the balanced accuracy
        assert points["balanced"].metrics["balanced_accuracy"].value is None
        assert "n/a [n/a, n/a]" in path.read_text()
    accuracy = ev.metrics["accuracy"]
    assert accuracy.value == pytest.approx({"normal only": 10, "abnormal only": 20, "both": 30}[kind] / 30)
    assert accuracy.ci_low is not None and accuracy.ci_high is not None
    assert path == folder / "report.md"
    text = path.read_text()
    assert "(digest `0123456789abcdef`)" in text
    verdict = "met" if kind == "both" else "**not met**"
    assert f"- Target: accuracy ≥ 0.95 — {verdict} (accuracy {accuracy.value:.3f})" in text
    assert f"- Challenge F1 (mean over normal, af, other): {ev.challenge_f1:.3f}" in text
    assert f"| Accuracy | {accuracy.value:.3f} | [{accuracy.ci_low:.3f}, {accuracy.ci_high:.3f}] |" in text
    assert points["balanced"].metrics["accuracy"] == accuracy  # the balanced point is the one `metrics` is at
    assert f"({100 * truth.mean():.1f} % of these studies should be flagged)" in text
    assert "| balanced | 0.5000 |" in text and "| safety | 0.4000 |" in text
    assert json.loads((folder / "evaluation.json").read_text())["operating_points"]["safety"]["threshold"] == 0.4
    assert doc["ci"] == "95 % percentile bootstrap" and f"- Intervals: {doc['ci']} (" in text
    assert (folder / "evaluation.json").read_text() == json.dumps(doc, indent=2)
    for png in ("roc.png", "confusion.png"):
        assert (folder / png).read_bytes().startswith(b"\x89PNG")


# --- multi-class figures ---------------------------------------------------------------------------------------


@st.composite
def multiclass(draw: st.DrawFn) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    k = draw(st.integers(1, 5))
    n = draw(st.integers(0, 40))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    predicted = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    return np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64), k


@FAST
@given(multiclass())
def test_confusion_equals_count_oracle(data: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]) -> None:
    labels, predicted, k = data
    expected = [[0] * k for _ in range(k)]
    for t, p in zip(labels.tolist(), predicted.tolist(), strict=True):
        expected[t][p] += 1
    assert multiclass_confusion(labels, predicted, k) == expected


@FAST
@given(multiclass(), st.data())
def test_challenge_f1_equals_mean_per_class_f1(
    data: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int], pick: st.DataObject
) -> None:
    labels, predicted, k = data
    scored = pick.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    per_class = []
    for c in scored:
        tp = sum(int(t == c and p == c) for t, p in zip(labels, predicted, strict=True))
        fp = sum(int(t != c and p == c) for t, p in zip(labels, predicted, strict=True))
        fn = sum(int(t == c and p != c) for t, p in zip(labels, predicted, strict=True))
        per_class.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert challenge_f1(labels, predicted, scored) == pytest.approx(sum(per_class) / len(per_class), abs=1e-12)


# --- bootstrap_ci ----------------------------------------------------------------------------------------------


class Recorder:
    """A statistic that records every index array it is given and returns the mean of ``values`` over it."""

    def __init__(self, values: Floats) -> None:
        self.values = values
        self.draws: list[npt.NDArray[np.int64]] = []
        self.returned: list[float] = []

    def __call__(self, index: npt.NDArray[np.int64]) -> dict[str, float]:
        self.draws.append(np.array(index, copy=True))
        mean = float(np.mean(self.values[index]))
        self.returned.append(mean)
        return {"mean": mean}


SAMPLE = st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30).map(lambda v: np.asarray(v, dtype=np.float64))
SEED = st.integers(0, 2**32 - 1)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), SEED)
def test_bootstrap_draws_every_index_including_the_last(n: int, seed: int) -> None:
    """200 resamples of n items miss a given item with probability (1 - 1/n)^(200 n) < 1e-87."""
    rec = Recorder(np.zeros(n))
    bootstrap_ci(rec, n, resamples=200, seed=seed)
    assert len(rec.draws) == 200
    for index in rec.draws:
        assert index.shape == (n,)
        assert np.issubdtype(index.dtype, np.integer)
        assert index.min() >= 0 and index.max() <= n - 1
    assert set(np.concatenate(rec.draws).tolist()) == set(range(n))


@FAST
@given(SAMPLE, SEED)
def test_bootstrap_interval_is_the_percentile_of_the_resampled_statistic(values: Floats, seed: int) -> None:
    rec = Recorder(values)
    low, high = bootstrap_ci(rec, len(values), resamples=100, seed=seed, level=0.9)["mean"]
    returned = np.asarray(rec.returned)
    # (1 - 0.9) / 2 is 0.04999999999999999 in floats: allow for the interpolation it shifts
    assert low == pytest.approx(float(np.quantile(returned, 0.05)), rel=1e-9, abs=1e-9)
    assert high == pytest.approx(float(np.quantile(returned, 0.95)), rel=1e-9, abs=1e-9)


@FAST
@given(SAMPLE, SEED)
def test_bootstrap_interval_of_the_mean_contains_the_mean(values: Floats, seed: int) -> None:
    low, high = bootstrap_ci(Recorder(values), len(values), resamples=200, seed=seed)["mean"]
    mean = float(np.mean(values))
    slack = 1e-9 * (1.0 + float(np.max(np.abs(values))))  # the mean of a reordered resample may round differently
    assert low - slack <= mean <= high + slack
    assert low <= high
    assert float(np.min(values)) - slack <= low and high <= float(np.max(values)) + slack


@FAST
@given(SAMPLE, SEED)
def test_bootstrap_is_deterministic_for_a_seed(values: Floats, seed: int) -> None:
    a, b = Recorder(values), Recorder(values)
    assert bootstrap_ci(a, len(values), resamples=50, seed=seed) == bootstrap_ci(
        b, len(values), resamples=50, seed=seed
    )
    assert all(np.array_equal(x, y) for x, y in zip(a.draws, b.draws, strict=True))


@FAST
@given(SAMPLE, SEED, st.floats(0.05, 0.9), st.floats(0.05, 0.9))
def test_bootstrap_intervals_nest_by_level(values: Floats, seed: int, x: float, y: float) -> None:
    narrow, wide = sorted((x, y))
    lo_n, hi_n = bootstrap_ci(Recorder(values), len(values), resamples=80, seed=seed, level=narrow)["mean"]
    lo_w, hi_w = bootstrap_ci(Recorder(values), len(values), resamples=80, seed=seed, level=wide)["mean"]
    assert lo_w <= lo_n <= hi_n <= hi_w


@FAST
@given(st.integers(1, 30), SEED, st.floats(-1e6, 1e6))
def test_bootstrap_of_a_constant_is_that_constant(n: int, seed: int, c: float) -> None:
    assert bootstrap_ci(lambda i: {"c": c}, n, resamples=20, seed=seed) == {"c": (c, c)}


@FAST
@given(st.integers(1, 30), SEED)
def test_bootstrap_leaves_out_undefined_resamples(n: int, seed: int) -> None:
    """NaN / inf resamples are dropped: the interval comes from the defined ones only."""

    def stat(index: npt.NDArray[np.int64]) -> dict[str, float]:
        first = int(index[0])
        return {
            "sometimes": math.nan if first % 2 else float(first),
            "never": math.nan,
            "infinite": math.inf if first % 2 else 1.0,
        }

    out = bootstrap_ci(stat, n, resamples=100, seed=seed)
    low, high = out["sometimes"]
    assert math.isnan(low) or (0 <= low <= high <= n - 1)
    assert all(math.isnan(v) for v in out["never"])
    assert out["infinite"] in {(1.0, 1.0)} or all(math.isnan(v) for v in out["infinite"])


@FAST
@given(labelled(min_size=1), SEED)
def test_bootstrap_of_binary_metrics_brackets_values_in_unit_interval(data: tuple[Bools, Floats], seed: int) -> None:
    """The way evaluate_probs uses it; one-class resamples (NaN AUROC) do not crash it."""
    truth, score = data
    cis = bootstrap_ci(lambda i: binary_metrics(truth[i], score[i], 0.5), len(truth), resamples=30, seed=seed)
    assert set(cis) == set(BINARY_METRICS)
    for low, high in cis.values():
        assert (math.isnan(low) and math.isnan(high)) or 0.0 <= low <= high <= 1.0


def test_bootstrap_defaults_are_1000_resamples_seed_0_level_95() -> None:
    values = np.random.default_rng(7).random(25)
    default, explicit = Recorder(values), Recorder(values)
    assert bootstrap_ci(default, 25) == bootstrap_ci(explicit, 25, resamples=1000, seed=0, level=0.95)
    assert len(default.draws) == 1000
    assert all(np.array_equal(x, y) for x, y in zip(default.draws, explicit.draws, strict=True))


def test_bootstrap_of_one_resample() -> None:
    rec = Recorder(np.arange(5.0))
    low, high = bootstrap_ci(rec, 5, resamples=1)["mean"]
    assert low == high == rec.returned[0]


@pytest.mark.parametrize(
    ("n", "resamples", "level", "message"),
    [
        (0, 10, 0.95, "empty"),
        (-1, 10, 0.95, "empty"),
        (5, 0, 0.95, "at least one resample"),
        (5, 10, 0.0, "level"),
        (5, 10, 1.0, "level"),
        (5, 10, 1.5, "level"),
    ],
)
def test_bootstrap_bad_arguments_raise(n: int, resamples: int, level: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(lambda i: {"x": 0.0}, n, resamples=resamples, level=level)


@pytest.mark.parametrize(
    ("labels", "predicted", "message"),
    [
        ([0, 3], [0, 1], "a label lies outside 0..2"),
        ([0, 1], [0, -1], "a predicted class lies outside 0..2"),
        ([0, 1], [0], "same length"),
    ],
)
def test_confusion_bad_input_raises(labels: list[int], predicted: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        multiclass_confusion(np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64), 3)


def test_challenge_f1_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="no scored class"):
        challenge_f1(np.array([0, 1]), np.array([0, 1]), [])
    with pytest.raises(ValueError, match="same length"):
        challenge_f1(np.array([0, 1]), np.array([0]), [0])


# --- evaluate_probs: the metrics as the CLI and the model card report them -------------------------------------


@st.composite
def class_probs(draw: st.DrawFn) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """ECG-rhythm labels and class probabilities (rows sum to 1; coarse, so scores tie with thresholds)."""
    n = draw(st.integers(1, 30))
    labels = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    weights = draw(st.lists(st.lists(st.integers(0, 4), min_size=4, max_size=4), min_size=n, max_size=n))
    w = np.asarray(weights, dtype=np.float64) + np.asarray([[1e-3, 0, 0, 0]])  # never all zero
    return np.asarray(labels, dtype=np.int64), (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(class_probs(), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), SEED)
def test_evaluate_probs_agrees_with_the_pure_functions(
    data: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]], threshold: float, seed: int
) -> None:
    labels, probs = data
    task = get_task("ecg-rhythm")
    score = task.flag_scores(probs)
    truth = labels != task.classes.index("normal")
    ev = evaluate_probs(
        task,
        labels,
        probs,
        threshold,
        split="s",
        dataset_path="/x",
        dataset_digest="d",
        resamples=40,
        seed=seed,
        note="kept",
    )
    assert ev.n == len(labels) and ev.note == "kept"
    point = binary_metrics(truth, score, threshold)
    cis = bootstrap_ci(lambda i: binary_metrics(truth[i], score[i], threshold), len(labels), 40, seed)
    for key, m in ev.metrics.items():
        expected = None if math.isnan(point[key]) else point[key]
        assert m.value == expected, key
        if m.value is not None and m.ci_low is not None and m.ci_high is not None:
            assert m.ci_low <= m.value <= m.ci_high, key
            assert m.ci_low == min(cis[key][0], m.value), key  # widened to the point only where it misses it
            assert m.ci_high == max(cis[key][1], m.value), key
        else:
            assert (m.ci_low is None) == math.isnan(cis[key][0]), key
    # the class reported is on the flag's side of the threshold (inclusive), and F1 leaves out "noisy"
    flagged = score >= threshold
    predicted = np.asarray(ev.confusion).sum(axis=0)
    assert int(predicted[task.classes.index("normal")]) == int(np.sum(~flagged))
    scored = [i for i, c in enumerate(task.classes) if c != "noisy"]
    classes = np.asarray(
        [task.classes.index(task.label_for(p, bool(f))) for p, f in zip(probs, flagged, strict=True)], dtype=np.int64
    )
    assert ev.challenge_f1 == pytest.approx(challenge_f1(labels, classes, scored), abs=1e-12)
    accuracy = ev.metrics["accuracy"].value
    assert ev.target.met == (accuracy is not None and accuracy >= ev.target.threshold)


def _ecg_probs(flags: list[bool]) -> npt.NDArray[np.float32]:
    """Class probabilities whose flag score (1 - P(normal)) is 0.8 where flagged, else 0.2."""
    return np.asarray([[0.2, 0.8, 0.0, 0.0] if f else [0.8, 0.2, 0.0, 0.0] for f in flags], dtype=np.float32)


@pytest.mark.parametrize(("correct", "met"), [(19, True), (18, False)])
def test_target_is_met_at_exactly_the_target_accuracy(correct: int, met: bool) -> None:
    """19 of 20 right is accuracy 0.95: the default target (accuracy >= 0.95) is met, inclusive."""
    task = get_task("ecg-rhythm")
    labels = np.asarray([1] * 10 + [0] * 10, dtype=np.int64)
    flags = [True] * 10 + [False] * 10
    for i in range(20 - correct):
        flags[i] = not flags[i]
    ev = evaluate_probs(
        task, labels, _ecg_probs(flags), 0.5, split="s", dataset_path="/x", dataset_digest="d", resamples=5
    )
    assert ev.metrics["accuracy"].value == correct / 20
    assert ev.target.metric == "accuracy" and ev.target.threshold == 0.95
    assert ev.target.met is met


def test_evaluate_probs_default_seed_is_0() -> None:
    task = get_task("ecg-rhythm")
    labels = np.asarray([0, 1, 2, 3, 0, 1, 2, 3, 0, 1], dtype=np.int64)
    probs = _ecg_probs([False, True, True, True, True, False, True, False, False, True])
    common = {"split": "s", "dataset_path": "/x", "dataset_digest": "d", "resamples": 30}
    default = evaluate_probs(task, labels, probs, 0.5, **common)  # type: ignore[arg-type]
    assert default.metrics == evaluate_probs(task, labels, probs, 0.5, seed=0, **common).metrics  # type: ignore[arg-type]
    assert default.metrics != evaluate_probs(task, labels, probs, 0.5, seed=1, **common).metrics  # type: ignore[arg-type]
