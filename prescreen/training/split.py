"""Record-level stratified splits."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

IntArray = npt.NDArray[np.int64]


def stratified_split(
    labels: IntArray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[IntArray, IntArray, IntArray]:
    """Indices of train / validation / test, stratified by label, reproducible by ``seed``.

    The validation part drives early stopping and the operating threshold; the test part is
    never looked at during training and gives the card's held-out figures.
    """
    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    strat: IntArray | None = labels if counts[counts > 0].min() >= 3 else None
    if test_fraction > 0:
        rest, test = _split(idx, test_fraction, strat, seed)
    else:
        rest, test = idx, idx[:0]
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = _split(rest, val_share, None if strat is None else labels[rest], seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _split(idx: IntArray, size: float, strat: IntArray | None, seed: int) -> tuple[IntArray, IntArray]:
    """Stratified when possible; scikit-learn refuses to stratify tiny sets (a part with fewer
    items than there are classes), which then get a plain random split instead of a crash."""
    if strat is not None:
        try:
            a, b = train_test_split(idx, test_size=size, stratify=strat, random_state=seed)
            return a, b
        except ValueError:
            pass
    a, b = train_test_split(idx, test_size=size, random_state=seed)
    return a, b


def grouped_split(
    labels: IntArray,
    groups: IntArray,
    test_fraction: float,
    folds: int,
    fold: int,
    seed: int,
    second_fold: int | None = None,
) -> tuple[IntArray, IntArray, IntArray]:
    """Train / validation / test indices where no group straddles two parts.

    The test part is one fold of a ``round(1 / test_fraction)``-fold stratified group split (never
    used in training, early stopping or choosing thresholds); the rest is split into ``folds``
    stratified group folds, of which ``fold`` validates and the others train. With
    ``second_fold`` (a nested cross-validation's run), that fold validates too.

    Raises:
        ValueError: ``fold`` or ``second_fold`` outside ``0..folds-1``, the two equal, or fewer
            than 2 folds (3 with ``second_fold``: something must be left to train on).
    """
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"need 2 or more folds and 0 <= fold < folds, not fold {fold} of {folds}")
    if second_fold is not None and (folds < 3 or not 0 <= second_fold < folds or second_fold == fold):
        raise ValueError(
            f"a second held-out fold needs 3 or more folds and another fold of 0..{folds - 1}, "
            f"not {second_fold} beside {fold} of {folds}"
        )
    idx = np.arange(len(labels))
    if test_fraction > 0:
        outer = StratifiedGroupKFold(n_splits=max(2, round(1 / test_fraction)), shuffle=True, random_state=seed)
        rest, test = next(outer.split(idx, labels, groups))
    else:
        rest, test = idx, idx[:0]
    inner = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    parts = list(inner.split(rest, labels[rest], groups[rest]))
    val = parts[fold][1] if second_fold is None else np.concatenate([parts[fold][1], parts[second_fold][1]])
    train = np.setdiff1d(np.arange(len(rest)), val)
    return np.sort(rest[train]), np.sort(rest[val]), np.sort(test)
