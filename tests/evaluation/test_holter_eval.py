"""Holter evaluation: beat matching, gross statistics with bootstrap-by-record CIs, reference events,
the report, and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.datasets.holter import read_reference
from prescreen.errors import DatasetError
from prescreen.evaluation.holter import (
    METRICS,
    RecordOutcome,
    evaluate_holter,
    event_counts,
    events_overlap,
    gross,
    match_beats,
    metrics_with_ci,
    outcomes_document,
    reference_summary,
    write_holter_report,
)
from prescreen.models.holter_events import Event, EventKind
from tests.conftest import data_dir
from tests.peers import DATA_HINT, require_peer

TOL = 54  # 150 ms at 360 Hz


def ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def test_match_within_tolerance_only() -> None:
    ref = ints([1000, 2000, 3000, 4000])
    det = ints([1000 + TOL, 2000 - TOL - 1, 3010, 5000])
    ref_idx, det_idx = match_beats(ref, det, TOL)
    assert ref_idx.tolist() == [0, 2] and det_idx.tolist() == [0, 2]


def test_match_is_one_to_one_closest_first() -> None:
    ref = ints([1000, 1060])
    det = ints([1030, 1050])
    ref_idx, det_idx = match_beats(ref, det, TOL)
    assert list(zip(ref_idx.tolist(), det_idx.tolist(), strict=True)) == [(0, 0), (1, 1)]
    ref_idx, det_idx = match_beats(ints([1000]), ints([990, 1005]), TOL)
    assert det_idx.tolist() == [1]


def test_match_of_unsorted_detections_and_empty_inputs() -> None:
    ref_idx, det_idx = match_beats(ints([100, 500]), ints([505, 98]), TOL)
    assert ref_idx.tolist() == [0, 1] and det_idx.tolist() == [1, 0]
    assert match_beats(ints([]), ints([1, 2]), TOL)[0].size == 0
    assert match_beats(ints([1, 2]), ints([]), TOL)[0].size == 0


@given(st.lists(st.integers(0, 100_000), max_size=60, unique=True), st.lists(st.integers(-80, 80), max_size=60))
@settings(max_examples=80, deadline=None)
def test_matches_are_one_to_one_and_within_tolerance(ref: list[int], jitter: list[int]) -> None:
    reference = np.sort(ints(ref))
    detected = ints([r + j for r, j in zip(reference.tolist(), jitter, strict=False)])
    ref_idx, det_idx = match_beats(reference, detected, TOL)
    assert len(set(ref_idx.tolist())) == len(ref_idx) and len(set(det_idx.tolist())) == len(det_idx)
    assert np.all(np.abs(reference[ref_idx] - detected[det_idx]) <= TOL)


def outcome(
    name: str, cm: list[list[int]], n_det: int | None = None, flags: tuple[bool, bool] = (False, False)
) -> RecordOutcome:
    confusion = np.asarray(cm, dtype=np.int64)
    matched = int(confusion.sum())
    return RecordOutcome(
        record=name,
        n_ref=matched + 1,
        n_det=n_det if n_det is not None else matched,
        matched=matched,
        confusion=confusion,
        events={"v_run": (2, 1, 2, 2), "pause": (0, 0, 1, 0), "af": (0, 0, 0, 0)},
        flag_ref=flags[0],
        flag_pred=flags[1],
    )


def cm_of(n: int = 0, s: int = 0, v: int = 0, wrong_n: int = 0) -> list[list[int]]:
    cm = [[0] * 5 for _ in range(5)]
    cm[0][0], cm[1][1], cm[2][2], cm[0][2] = n, s, v, wrong_n
    return cm


def test_gross_statistics_pool_beats_over_records() -> None:
    a = outcome("a", cm_of(n=90, v=10))
    b = outcome("b", cm_of(n=80, s=10, wrong_n=10), flags=(True, False))
    g = gross([a, b])
    assert g["accuracy"] == pytest.approx(190 / 200)
    assert g["sensitivity_V"] == 1.0 and g["ppv_V"] == pytest.approx(10 / 20)
    assert g["sensitivity_N"] == pytest.approx(170 / 180)
    assert g["qrs_sensitivity"] == pytest.approx(200 / 202)
    assert np.isnan(g["sensitivity_F"])
    assert g["v_run_sensitivity"] == 0.5 and g["v_run_ppv"] == 1.0
    assert np.isnan(g["af_sensitivity"]) and g["pause_ppv"] == 0.0
    assert g["flag_accuracy"] == 0.5


def test_cis_hold_the_value_and_undefined_metrics_are_none() -> None:
    outcomes = [outcome(str(i), cm_of(n=100 + i, s=i % 3, v=5 + i)) for i in range(8)]
    m = metrics_with_ci(outcomes, resamples=200, seed=1)
    assert list(m) == list(METRICS)
    for key, value in m.items():
        if value["value"] is None:
            assert value["ci_low"] is None and value["ci_high"] is None, key
        else:
            assert value["ci_low"] <= value["value"] <= value["ci_high"], key
    assert m["sensitivity_F"] == {"value": None, "ci_low": None, "ci_high": None}


def test_bootstrap_resamples_records_not_beats() -> None:
    good = outcome("good", cm_of(n=1000))
    bad = outcome("bad", cm_of(wrong_n=1000))
    m = metrics_with_ci([good, bad], resamples=400, seed=0)["accuracy"]
    assert m["value"] == pytest.approx(0.5)
    # by beat, 2,000 beats would give a CI of about +-0.02; two records give all-good or all-bad resamples
    assert m["ci_low"] == 0.0 and m["ci_high"] == 1.0


@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 20), st.integers(0, 30), st.integers(0, 30)),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=30, deadline=None)
def test_ci_always_contains_the_value(rows: list[tuple[int, int, int, int]]) -> None:
    outcomes = [outcome(str(i), cm_of(*row)) for i, row in enumerate(rows)]
    for key, value in metrics_with_ci(outcomes, resamples=50).items():
        if value["value"] is not None:
            assert value["ci_low"] <= value["value"] <= value["ci_high"], key


def test_document_target_goals_and_report(tmp_path: Path) -> None:
    outcomes = [outcome(str(i), cm_of(n=100, s=3, v=10, wrong_n=i), flags=(i % 2 == 0, True)) for i in range(4)]
    dataset = {"path": "x", "n": 4, "beats": 400, "digest": "d" * 64, "excluded": ["102", "104", "107", "217"]}
    doc = outcomes_document(outcomes, dataset, resamples=100)
    assert doc["task"] == "holter" and "model" in doc
    assert doc["target"]["metric"] == "accuracy" and doc["target"]["threshold"] == 0.96
    assert doc["target"]["met"] is (doc["metrics"]["accuracy"]["value"] >= 0.96)
    assert set(doc["goals"]) == {"accuracy", "sensitivity_V", "sensitivity_S", "qrs_sensitivity", "qrs_ppv"}
    assert np.asarray(doc["confusion"]).shape == (5, 5)
    row = doc["per_record"][1]
    assert set(row) == {"record", "beats", "accuracy", "qrs_sensitivity", "qrs_ppv", "V_sens", "S_sens", "flag_ref",
                        "flag_pred"}  # fmt: skip
    json.dumps(doc)
    report = write_holter_report(tmp_path, doc)
    text = report.read_text()
    assert "| N |" in text and "## Per record" in text and "accuracy" in text
    assert (tmp_path / "confusion.png").stat().st_size > 1000


def test_events_overlap_with_tolerance() -> None:
    a = Event(EventKind.NSVT, 10.0, 12.0, 3, "", True)
    b = Event(EventKind.NSVT, 12.5, 14.0, 3, "", True)
    c = Event(EventKind.NSVT, 20.0, 21.0, 3, "", True)
    assert events_overlap(a, b) and not events_overlap(a, c)
    assert event_counts([a, c], [b]) == (2, 1, 1, 1)


@pytest.fixture(scope="module")
def mitdb() -> Path:
    folder = data_dir() / "mitdb"
    require_peer(f"the MIT-BIH records under {folder}", (folder / "201.atr").is_file(), DATA_HINT)
    return folder


@pytest.mark.data
def test_reference_flag_follows_the_rule_on_annotations(mitdb: Path) -> None:
    af = reference_summary(read_reference(mitdb / "201"))
    assert af.verdict.flagged and af.summary["counts"]["af_episodes"] >= 1
    clean = reference_summary(read_reference(mitdb / "101"))
    assert not clean.verdict.flagged and clean.summary["beats"]["N"] > 1800
    bigeminy = reference_summary(read_reference(mitdb / "119"))
    assert bigeminy.verdict.label == "v-burden"


@pytest.mark.data
def test_records_without_annotations_are_refused_by_name(mitdb: Path, tmp_path: Path) -> None:
    for suffix in (".hea", ".dat", ".atr"):
        shutil.copy(mitdb / f"101{suffix}", tmp_path / f"101{suffix}")
    for suffix in (".hea", ".dat"):
        shutil.copy(mitdb / f"115{suffix}", tmp_path / f"115{suffix}")
    with pytest.raises(DatasetError, match=r"record 115 .* has no reference annotations \(115.atr\)"):
        evaluate_holter(tmp_path, lambda x: np.zeros((len(x), 5), dtype=np.float32), progress=False)


@pytest.mark.data
def test_evaluate_a_record_with_an_all_normal_classifier(mitdb: Path, tmp_path: Path) -> None:
    for name in ("115", "102"):
        for suffix in (".hea", ".dat", ".atr"):
            shutil.copy(mitdb / f"{name}{suffix}", tmp_path / f"{name}{suffix}")

    def all_normal(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 5), dtype=np.float32)
        out[:, 0] = 1.0
        return out

    doc = evaluate_holter(tmp_path, all_normal, resamples=20, progress=False)
    assert doc["dataset"]["n"] == 1 and "102" in doc["dataset"]["excluded"]
    assert doc["metrics"]["accuracy"]["value"] == 1.0  # 115 holds N beats only
    assert doc["metrics"]["qrs_sensitivity"]["value"] >= 0.995
    assert doc["per_record"][0]["record"] == "115"
    assert doc["per_record"][0]["flag_ref"] is False
