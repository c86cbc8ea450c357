"""The held-out figures by distance from the training side: a pure table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.evaluation.novelty import NOVELTY_BANDS, novelty_table


def test_each_band_counts_its_records_and_rates_them_with_intervals() -> None:
    distance = np.array([0, 3, 6, 6, 10, 20, 30, 64])
    truth = np.array([True, False, True, False, False, True, False, False])
    score = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.6, 0.1], dtype=np.float32)
    rows = {r["distance_bits"]: r for r in novelty_table(distance, truth, score, 0.5)}
    assert list(rows) == ["0-4", "5-8", "9-11", "12-64"]
    assert [rows[b]["records"] for b in rows] == [2, 2, 1, 3]
    near, close, far = rows["0-4"], rows["5-8"], rows["12-64"]
    assert near["accuracy"]["value"] == 1.0 and near["auroc"] == 1.0
    assert close["specificity"] == pytest.approx(
        {"value": 0.0, "ci_low": 0.0, "ci_high": close["specificity"]["ci_high"], "n": 1}
    )
    assert 0.5 < close["specificity"]["ci_high"] < 1.0  # one record: a wide interval, not a verdict
    assert far["sensitivity"]["value"] == 0.0 and far["specificity"]["value"] == 0.5  # missed 0.3; flagged 0.6
    assert rows["9-11"]["auroc"] is None and rows["9-11"]["sensitivity"]["value"] is None  # no positive there


def test_arrays_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        novelty_table(np.zeros(3, np.int64), np.zeros(2, bool), np.zeros(3, np.float32), 0.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64), st.booleans(), st.floats(0, 1)), min_size=1, max_size=60))
def test_every_record_falls_in_exactly_one_band(records: list[tuple[int, bool, float]]) -> None:
    distance = np.array([r[0] for r in records], dtype=np.int64)
    truth = np.array([r[1] for r in records])
    score = np.array([r[2] for r in records], dtype=np.float32)
    rows = novelty_table(distance, truth, score, 0.5)
    assert len(rows) == len(NOVELTY_BANDS)
    assert sum(r["records"] for r in rows) == len(records)
    assert sum(r["positives"] for r in rows) == int(truth.sum())
    correct = sum(round(r["accuracy"]["value"] * r["records"]) for r in rows if r["records"])
    assert correct == int(((score >= 0.5) == truth).sum())
