"""Record-level stratified splits."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import train_test_split

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
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=strat, random_state=seed)
    else:
        rest, test = idx, idx[:0]
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=None if strat is None else labels[rest], random_state=seed
    )
    return np.sort(train), np.sort(val), np.sort(test)
