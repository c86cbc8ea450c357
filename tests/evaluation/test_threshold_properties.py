"""Property tests of ``choose_threshold`` against a brute-force oracle over every possible cut."""

from __future__ import annotations

import math
import random

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prescreen.evaluation.metrics import binary_metrics
from prescreen.evaluation.threshold import candidate_thresholds, choose_threshold

FAST = settings(max_examples=150, deadline=None)

# Probability-like scores with many ties (a coarse grid) mixed with arbitrary values in [0, 1].
PROB = st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]), st.floats(0.0, 1.0))
# Any finite float: logits, huge or tiny magnitudes, subnormals, neighbouring floats.
WIDE = st.one_of(
    PROB,
    st.floats(-1e308, 1e308),
    st.sampled_from([1e-300, 5e-324, -5e-324, 1e10, 1e16, -1e16, 1.7e308, -1.7e308]),
)


@st.composite
def labelled(
    draw: st.DrawFn, scores: st.SearchStrategy[float] = PROB, min_size: int = 1
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Validation labels and flag scores of equal length."""
    n = draw(st.integers(min_size, 40))
    truth = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    score = draw(st.lists(scores, min_size=n, max_size=n))
    return np.asarray(truth, dtype=bool), np.asarray(score, dtype=np.float64)


def _oracle(truth: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> tuple[int, int]:
    """(correct, true positives) of the best cut: the most correct flags, then the most true positives.

    Every possible flag set of a ``score >= t`` rule is "flag the items scoring at least v" for a
    distinct score v, or "flag nothing".
    """
    cuts = [score >= v for v in np.unique(score)] + [np.zeros(len(score), dtype=bool)]
    return max((int(np.sum(pred == truth)), int(np.sum(pred & truth))) for pred in cuts)


def _applied(truth: npt.NDArray[np.bool_], score: npt.NDArray[np.float64], t: float) -> tuple[int, int]:
    pred = score >= t
    return int(np.sum(pred == truth)), int(np.sum(pred & truth))


@FAST
@given(labelled())
def test_chosen_threshold_is_as_good_as_any_cut(data: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]) -> None:
    truth, score = data
    t = choose_threshold(truth, score)
    assert _applied(truth, score, t) == _oracle(truth, score)


@FAST
@given(labelled(WIDE))
def test_chosen_threshold_is_optimal_for_any_finite_scores(
    data: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]],
) -> None:
    """Huge, tiny and neighbouring scores must not lose a cut (no 1e-6 nudge lost to rounding)."""
    truth, score = data
    t = choose_threshold(truth, score)
    assert math.isfinite(t)  # it goes into the model card's JSON
    assert _applied(truth, score, t) == _oracle(truth, score)


@FAST
@given(st.lists(WIDE, min_size=1, max_size=40))
def test_candidates_interleave_the_distinct_scores(scores: list[float]) -> None:
    """One candidate below all scores, one in each gap (above the lower score, at most the upper), one above all."""
    values = np.unique(scores)
    cand = candidate_thresholds(np.asarray(scores))
    assert len(cand) == len(values) + 1
    assert cand[0] < values[0]
    assert cand[-1] > values[-1]
    assert np.all(values[:-1] < cand[1:-1])
    assert np.all(cand[1:-1] <= values[1:])


def test_nudge_beyond_the_extremes() -> None:
    """The shipped cards' thresholds: 1e-6 beyond the extremes, midpoints between scores."""
    cand = candidate_thresholds(np.array([0.5, 0.0, 1.0, 0.5]))
    assert cand.tolist() == [-1e-6, 0.25, 0.75, 1.0 + 1e-6]


@FAST
@given(labelled())
def test_accuracy_at_chosen_threshold_beats_flag_all_and_flag_none(
    data: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]],
) -> None:
    truth, score = data
    accuracy = binary_metrics(truth, score, choose_threshold(truth, score))["accuracy"]
    assert accuracy >= float(np.mean(truth))  # flag everything
    assert accuracy >= float(np.mean(~truth))  # flag nothing
    for v in np.unique(score):
        assert accuracy >= float(np.mean((score >= v) == truth))


@FAST
@given(st.lists(PROB, min_size=1, max_size=40))
def test_all_positive_flags_everything(scores: list[float]) -> None:
    score = np.asarray(scores)
    t = choose_threshold(np.ones(len(score), dtype=bool), score)
    assert np.all(score >= t)


@FAST
@given(st.lists(PROB, min_size=1, max_size=40))
def test_all_negative_flags_nothing(scores: list[float]) -> None:
    score = np.asarray(scores)
    t = choose_threshold(np.zeros(len(score), dtype=bool), score)
    assert not np.any(score >= t)


@FAST
@given(labelled(), st.randoms(use_true_random=False))
def test_order_of_items_does_not_matter(
    data: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]], rnd: random.Random
) -> None:
    truth, score = data
    order = list(range(len(truth)))
    rnd.shuffle(order)
    assert choose_threshold(truth[order], score[order]) == choose_threshold(truth, score)


@FAST
@given(labelled(st.floats(0.0, 1.0, width=32)))
def test_threshold_is_strictly_between_validation_scores(
    data: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]],
) -> None:
    """Model probabilities (float32) never sit exactly on the threshold: it is a midpoint or beyond the extremes."""
    truth, score = data
    t = choose_threshold(truth, score)
    assert t not in set(score.tolist())


@FAST
@given(labelled(min_size=2))
def test_separable_data_is_split_perfectly(data: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]) -> None:
    truth, score = data
    assume(truth.any() and not truth.all())
    score = np.where(truth, 2.0 + score, score)  # every positive above every negative
    t = choose_threshold(truth, score)
    assert np.array_equal(score >= t, truth)


@FAST
@given(labelled(st.floats(0.0, 1.0, width=32)))
def test_input_types_do_not_matter(data: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]) -> None:
    """0/1 integer labels, plain lists and float32 scores (as ``Task.flag_scores`` returns) give the same threshold."""
    truth, score = data
    t = choose_threshold(truth, score)
    assert choose_threshold(truth.astype(np.int64), score) == t
    assert choose_threshold(truth.tolist(), score.tolist()) == t
    assert choose_threshold(truth, score.astype(np.float32)) == t


def test_flag_everything_is_chosen_when_best() -> None:
    # 3 of 4 positive, the negative scores highest: flagging all (3/4) beats any other cut
    truth = np.array([True, True, True, False])
    score = np.array([0.1, 0.2, 0.3, 0.9])
    t = choose_threshold(truth, score)
    assert t <= 0.1
    assert binary_metrics(truth, score, t)["sensitivity"] == 1.0


def test_single_item() -> None:
    assert choose_threshold(np.array([True]), np.array([0.3])) <= 0.3
    assert choose_threshold(np.array([False]), np.array([0.3])) > 0.3


@pytest.mark.parametrize(
    ("truth", "score"),
    [
        ([True, False], [0.5]),
        ([True], [0.5, 0.6]),
        ([True, False], [0.5, math.nan]),
        ([True, False], [0.5, math.inf]),
        ([True, False], [-math.inf, 0.5]),
        ([[True, False]], [[0.5, 0.6]]),
    ],
)
def test_bad_input_raises(truth: list[bool] | list[list[bool]], score: list[float] | list[list[float]]) -> None:
    with pytest.raises(ValueError):
        choose_threshold(np.asarray(truth, dtype=bool), np.asarray(score))
