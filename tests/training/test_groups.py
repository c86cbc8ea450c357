"""Near-duplicate grouping (pHash) and group-disjoint splits."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import zoom

from prescreen.training.groups import near_duplicate_groups, phash, record_groups
from prescreen.training.split import grouped_split


def scene(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(8, 8))
    return zoom(coarse, size / 8, order=3).astype(np.float32)


def test_phash_survives_what_a_recapture_changes_and_tells_scenes_apart() -> None:
    a = scene(1)
    recapture = np.clip(a * 1.3 + 0.2 + np.random.default_rng(0).normal(0, 0.02, a.shape), -10, 10)
    distance_same = int(np.sum(phash(a) != phash(recapture)))
    distance_other = int(np.sum(phash(a) != phash(scene(2))))
    assert distance_same <= 4 < 20 <= distance_other


def test_groups_join_near_duplicates_transitively_and_only_them() -> None:
    a, b = scene(1), scene(2)
    images = [a[None], (a * 2 + 1)[None], b[None], scene(3)[None], (b + 0.01)[None]]
    groups = near_duplicate_groups(images)
    assert groups[0] == groups[1] and groups[2] == groups[4]
    assert len(set(groups.tolist())) == 3
    assert list(record_groups(3)) == [0, 1, 2]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_grouped_split_keeps_every_group_in_one_part(seed: int, folds: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 60, 200)
    labels = (groups % 3 == 0).astype(np.int64)  # a group shares its label, as near-duplicates do
    vals = []
    for fold in range(folds):
        train, val, test = grouped_split(labels, groups, 0.15, folds, fold, seed)
        parts = [set(groups[p].tolist()) for p in (train, val, test)]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert len(train) + len(val) + len(test) == 200
        vals.append(set(val.tolist()))
    rest = set(range(200)) - set(test.tolist())
    assert set().union(*vals) == rest and sum(len(v) for v in vals) == len(rest)  # out-of-fold covers it once


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 5))
def test_a_nested_run_validates_on_exactly_its_two_folds(seed: int, folds: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 60, 200)
    labels = (groups % 3 == 0).astype(np.int64)
    single = [set(grouped_split(labels, groups, 0.15, folds, k, seed)[1].tolist()) for k in range(folds)]
    i, j = sorted(rng.choice(folds, 2, replace=False).tolist())
    train, val, test = grouped_split(labels, groups, 0.15, folds, i, seed, second_fold=j)
    assert set(val.tolist()) == single[i] | single[j]
    assert not set(train.tolist()) & (set(val.tolist()) | set(test.tolist()))
    assert len(train) + len(val) + len(test) == 200
    assert not set(groups[train].tolist()) & set(groups[val].tolist())


def test_a_second_fold_must_be_another_fold_of_three_or_more() -> None:
    import pytest

    labels, groups = np.zeros(30, np.int64), np.arange(30)
    labels[::3] = 1
    for folds, fold, second in [(2, 0, 1), (4, 1, 1), (4, 0, 4)]:
        with pytest.raises(ValueError, match="second held-out fold"):
            grouped_split(labels, groups, 0.0, folds, fold, 0, second_fold=second)


def test_nearest_distance_finds_a_copy_and_ignores_the_rest() -> None:
    from prescreen.training.groups import nearest_distance

    rng = np.random.default_rng(3)
    references = [rng.standard_normal((1, 32, 32)).astype(np.float32) for _ in range(5)]
    copy = references[2] * 3.0  # same scene at another gain: the same hash
    other = rng.standard_normal((1, 32, 32)).astype(np.float32)
    got = nearest_distance([copy, other], references)
    assert got[0] == 0 and got[1] > 10
    assert nearest_distance([copy], []).tolist() == [64]
    assert nearest_distance([], references).shape == (0,)


def test_nearest_distance_is_the_same_in_blocks() -> None:
    from prescreen.training import groups

    rng = np.random.default_rng(4)
    references = [rng.standard_normal((8, 8)).astype(np.float32) for _ in range(2100)]  # two blocks of 2048
    queries = [references[2099], rng.standard_normal((8, 8)).astype(np.float32)]
    hashes = np.stack([groups.phash(r) for r in references]).astype(np.int64)
    q = np.stack([groups.phash(x) for x in queries]).astype(np.int64)
    brute = (q @ (1 - hashes).T + (1 - q) @ hashes.T).min(axis=1)
    assert groups.nearest_distance(queries, references).tolist() == brute.tolist()
    assert brute[0] == 0  # the last reference, in the second block, was found
