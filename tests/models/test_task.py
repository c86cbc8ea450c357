"""The ``Task`` contract shared by every task: flag score, reported label, window averaging, lookup."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.datasets.transforms import Windows
from prescreen.errors import PrescreenError, UnknownTaskError
from prescreen.models.task import get_task, task_names

BUILTIN = ("breast-us", "chest-xray", "ecg-rhythm")


# --------------------------------------------------------------------------- flag score


def test_flag_score_is_one_minus_probability_of_the_normal_class() -> None:
    task = get_task("ecg-rhythm")  # classes normal, af, other, noisy; normal = (normal,)
    probs = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.2, 0.5, 0.3],
            [0.7, 0.1, 0.1, 0.1],
            [0.25, 0.25, 0.25, 0.25],
        ],
        dtype=np.float32,
    )
    scores = task.flag_scores(probs)
    assert scores.dtype == np.float32
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, [0.0, 1.0, 0.3, 0.75], atol=1e-6)


def test_flag_score_sums_every_normal_class() -> None:
    """breast-us: normal and benign are both 'not flagged', so the score is P(malignant)."""
    task = get_task("breast-us")
    assert task.classes == ("normal", "benign", "malignant")
    probs = np.array([[0.1, 0.8, 0.1], [0.5, 0.0, 0.5], [0.0, 0.3, 0.7]], dtype=np.float32)
    np.testing.assert_allclose(task.flag_scores(probs), probs[:, 2], atol=1e-6)


def test_flag_rule_names_the_normal_classes() -> None:
    rule = get_task("breast-us").flag_rule
    assert "normal or benign" in rule
    assert "threshold" in rule


# --------------------------------------------------------------------------- reported label


def test_label_follows_the_flag_not_the_overall_argmax() -> None:
    task = get_task("ecg-rhythm")
    probs = np.array([0.5, 0.3, 0.15, 0.05])  # argmax is 'normal', but 1 - P(normal) = 0.5
    assert task.label_for(probs, flagged=True) == "af"  # the most likely class on the flagged side
    assert task.label_for(probs, flagged=False) == "normal"
    probs = np.array([0.1, 0.2, 0.6, 0.1])
    assert task.label_for(probs, flagged=False) == "normal"  # the only class on the normal side
    assert task.label_for(probs, flagged=True) == "other"


def test_label_with_two_normal_classes() -> None:
    task = get_task("breast-us")
    probs = np.array([0.2, 0.45, 0.35])
    assert task.label_for(probs, flagged=False) == "benign"
    assert task.label_for(probs, flagged=True) == "malignant"


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(BUILTIN),
    raw=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=4, max_size=4),
    threshold=st.floats(0.0, 1.0, allow_nan=False),
)
def test_label_is_always_on_the_side_of_the_flag(name: str, raw: list[float], threshold: float) -> None:
    task = get_task(name)
    probs = np.asarray(raw[: len(task.classes)], dtype=np.float64) + 1e-6
    probs = (probs / probs.sum()).astype(np.float32)
    flagged = bool(task.flag_scores(probs[None, :])[0] >= threshold)
    label = task.label_for(probs, flagged)
    assert (label in task.normal_classes) == (not flagged)
    side = [i for i, c in enumerate(task.classes) if (c in task.normal_classes) != flagged]
    assert probs[task.classes.index(label)] == max(probs[i] for i in side)


# --------------------------------------------------------------------------- window averaging


def _fake_probs(windows: np.ndarray) -> np.ndarray:
    """A stand-in network: probabilities that depend on each window's content."""
    x = windows.reshape(len(windows), -1)
    logits = np.stack([x.mean(axis=1), x[:, 0], x[:, -1], x.std(axis=1)], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def test_predict_by_windows_averages_each_signals_own_windows() -> None:
    task = get_task("ecg-rhythm")
    length = task.input_spec["window_samples"]
    rng = np.random.default_rng(0)
    # 1 window, 3 windows (0, L/2, L), 2 windows (the last one end-aligned), 1 padded window
    lengths = [length, 2 * length, length + 500, 300]
    signals = [rng.normal(size=n).astype(np.float32) for n in lengths]
    assert [len(task.windows(s)) for s in signals] == [1, 3, 2, 1]
    calls: list[int] = []

    def predict(windows: np.ndarray) -> np.ndarray:
        calls.append(len(windows))
        return _fake_probs(windows)

    got = task.predict_by_windows(signals, predict, batch=2)  # batches straddle signals
    assert got.shape == (4, 4)
    assert got.dtype == np.float32
    assert calls == [2, 2, 2, 1]  # 7 windows in batches of at most 2
    for signal, row in zip(signals, got, strict=True):
        expected = _fake_probs(task.windows(signal)).mean(axis=0)  # one signal on its own
        np.testing.assert_allclose(row, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_predict_by_windows_mean_of_known_window_outputs() -> None:
    """Signals whose windows the fake network maps to one-hot classes: the mean is countable."""
    task = get_task("ecg-rhythm")
    length = task.input_spec["window_samples"]
    half = length // 2
    # a signal of four constant half-windows 0, 1, 1, 3 → windows [0|1], [1|1], [1|3]
    a = np.repeat(np.array([0.0, 1.0, 1.0, 3.0], dtype=np.float32), half)
    b = np.full(length, 2.0, dtype=np.float32)  # one window [2|2]

    def one_hot_of_last_sample(windows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(windows), 4), dtype=np.float32)
        out[np.arange(len(windows)), windows[:, 0, -1].astype(int)] = 1.0
        return out

    got = task.predict_by_windows([a, b], one_hot_of_last_sample, batch=256)
    np.testing.assert_allclose(got[0], [0.0, 2 / 3, 0.0, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(got[1], [0.0, 0.0, 1.0, 0.0], atol=1e-6)


def test_predict_by_windows_on_image_frames() -> None:
    """Image tasks: every frame is a window; a study of 3 frames averages 3 outputs."""
    task = get_task("chest-xray")
    one = np.zeros((1, 64, 64), dtype=np.float32)
    three = np.stack([np.full((64, 64), v, dtype=np.float32) for v in (0.0, 1.0, 1.0)])

    def by_mean(frames: np.ndarray) -> np.ndarray:
        m = frames.mean(axis=(1, 2, 3))
        return np.stack([1 - m, m], axis=1).astype(np.float32)

    got = task.predict_by_windows([three, one], by_mean, batch=2)
    np.testing.assert_allclose(got, [[1 / 3, 2 / 3], [1.0, 0.0]], atol=1e-6)


def test_windows_cover_the_whole_signal() -> None:
    w = Windows(10, 5)
    x = np.arange(23, dtype=np.float32)
    out = w(x)
    assert out.shape == (4, 1, 10)
    assert out[-1, 0, -1] == 22  # the end of the signal is in the last window
    assert set(np.unique(out).tolist()) == set(range(23))


# --------------------------------------------------------------------------- lookup


def test_task_names_lists_the_builtin_tasks_sorted() -> None:
    names = task_names()
    assert names == sorted(names)
    assert set(BUILTIN) <= set(names)


@pytest.mark.parametrize("name", BUILTIN)
def test_get_task_returns_the_named_task(name: str) -> None:
    task = get_task(name)
    assert task.name == name
    assert set(task.normal_classes) < set(task.classes)  # something is flagged, something is not


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(UnknownTaskError) as info:
        get_task("knee-mri")
    message = str(info.value)
    assert "knee-mri" in message
    for name in BUILTIN:
        assert name in message
    assert "\n" not in message
    assert isinstance(info.value, PrescreenError)  # the CLI/API turn it into a one-line error
