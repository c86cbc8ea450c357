"""Record-level stratified train / validation / test splits."""

from __future__ import annotations

import numpy as np
import pytest

from prescreen.training.split import stratified_split


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


def _check_partition(n: int, parts: tuple[np.ndarray, ...]) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n, "parts overlap or miss items"
    assert set(joined.tolist()) == set(range(n))
    for part in parts:
        assert np.all(np.diff(part) > 0), "each part is sorted and has no duplicates"


def test_split_is_disjoint_and_covers_everything() -> None:
    labels = _labels([600, 90, 280, 30])
    train, val, test = stratified_split(labels, 0.15, 0.15, seed=0)
    _check_partition(len(labels), (train, val, test))
    assert not set(train) & set(val)
    assert not set(train) & set(test)
    assert not set(val) & set(test)
    assert len(test) == pytest.approx(0.15 * len(labels), abs=1)
    assert len(val) == pytest.approx(0.15 * len(labels), abs=2)


def test_split_preserves_class_proportions() -> None:
    counts = [600, 90, 280, 30]
    labels = _labels(counts)
    overall = np.bincount(labels) / len(labels)
    for part in stratified_split(labels, 0.15, 0.15, seed=3):
        share = np.bincount(labels[part], minlength=4) / len(part)
        np.testing.assert_allclose(share, overall, atol=0.02)
        assert np.all(np.bincount(labels[part], minlength=4) > 0), "every class in every part"


def test_same_seed_same_split() -> None:
    labels = _labels([200, 50, 80])
    a = stratified_split(labels, 0.2, 0.2, seed=42)
    b = stratified_split(labels, 0.2, 0.2, seed=42)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_different_seed_different_split() -> None:
    labels = _labels([200, 50, 80])
    a = stratified_split(labels, 0.2, 0.2, seed=1)
    b = stratified_split(labels, 0.2, 0.2, seed=2)
    assert not np.array_equal(a[2], b[2])
    assert not np.array_equal(a[1], b[1])


def test_zero_test_fraction_gives_empty_test() -> None:
    labels = _labels([80, 20])
    train, val, test = stratified_split(labels, 0.25, 0.0, seed=0)
    assert len(test) == 0
    assert test.dtype.kind == "i"
    _check_partition(len(labels), (train, val))
    assert len(val) == 25
    assert np.bincount(labels[val]).tolist() == [20, 5]


@pytest.mark.parametrize(
    ("counts", "val_fraction", "test_fraction"),
    [
        ([5, 1], 0.2, 0.2),  # a class with one member
        ([20, 1, 3], 0.15, 0.15),
        ([1, 1, 1, 1], 0.25, 0.25),
        ([3, 3], 0.2, 0.2),  # the test part holds fewer items than there are classes
        ([4, 3, 3], 0.1, 0.1),
        ([3, 3, 3, 3, 3, 3, 3], 0.15, 0.15),
        ([2, 1], 0.4, 0.0),
    ],
)
def test_tiny_label_arrays_do_not_crash(counts: list[int], val_fraction: float, test_fraction: float) -> None:
    labels = _labels(counts)
    train, val, test = stratified_split(labels, val_fraction, test_fraction, seed=0)
    _check_partition(len(labels), (train, val, test) if test_fraction > 0 else (train, val))
    assert len(train) > 0
    assert len(val) > 0
    assert (len(test) > 0) == (test_fraction > 0)


def test_small_split_reproducible() -> None:
    labels = _labels([3, 3])
    a = stratified_split(labels, 0.2, 0.2, seed=9)
    b = stratified_split(labels, 0.2, 0.2, seed=9)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
