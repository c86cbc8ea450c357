"""The pure parts of ``benchmarks/bench_models.py``: figures from the card and the BENCHMARKS.md writer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_models as bm

from prescreen.models.card import Calibration, Evaluation, MetricValue, ModelCard, OperatingPointSpec, Target


def card(training: dict[str, Any], onnx: dict[str, Any] | None = None, **extra: Any) -> ModelCard:
    return ModelCard(
        task="ecg-rhythm",
        name="ecg-rhythm",
        created="2026-11-30T00:00:00+00:00",
        classes=["normal", "af"],
        normal_classes=["normal"],
        flag_rule="rule",
        input_spec={},
        operating_threshold=0.3,
        threshold_chosen_on="validation",
        training=training,
        onnx=onnx or {"sha256": "ab" * 32, "size_bytes": 6_232_630},
        **extra,
    )


SINGLE = {"train_seconds": 1981.1, "epochs_run": 35, "best_epoch": 27, "config": {"threads": 2}}
ENSEMBLE = {"ensemble_of": 5, "cross_validation_folds": 5, "train_seconds_total": 5400.0, "members": []}


def test_pick_spreads_evenly_and_keeps_short_lists() -> None:
    assert bm.pick(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert bm.pick([1, 2], 5) == [1, 2]
    assert bm.pick([1, 2], 0) == []


def test_training_time_prefers_the_ensemble_total_and_says_which() -> None:
    assert bm.training_time(card(SINGLE)) == (1981.1, "train_seconds")
    assert bm.training_time(card(ENSEMBLE)) == (5400.0, "train_seconds_total")
    assert bm.training_time(card({})) == (None, "not on the card")
    assert bm.members(card(SINGLE)) == 1 and bm.members(card(ENSEMBLE)) == 5


def test_training_cell() -> None:
    assert bm.training_cell(card(SINGLE)) == "33.0 min (`train_seconds`; 1 run, 35 epochs, best 27, 2 threads)"
    assert bm.training_cell(card(ENSEMBLE)) == (
        "90.0 min (`train_seconds_total`; sum over 5 members, 5-fold cross-validation)"
    )
    assert bm.training_cell(card({**ENSEMBLE, "nested_models": 10})) == (
        "90.0 min (`train_seconds_total`; sum over 5 members, 5-fold cross-validation, and its 10 nested models "
        "that chose the operating points)"
    )
    assert bm.training_cell(card({})) == "not on the card"


def test_size_and_quantization_cells() -> None:
    assert bm.size_cell(6_232_630) == "6.23 (≤ 10 MB)"
    assert bm.size_cell(10_000_001) == "10.00 (**> 10 MB**)"
    assert bm.quantized_cell(card(SINGLE)) == "no (FP32)"
    q = {
        "fp32_size_bytes": 24_900_000,
        "decision_disagreement_vs_fp32": 0.0029,
        "checked_on": "1024 validation records, balanced operating point",
    }
    assert bm.quantized_cell(card(SINGLE, {"quantized": q})) == (
        "INT8 (FP32 24.90 MB; 0.3% of decisions changed on 1024 validation records, balanced operating point)"
    )
    converted = {
        "fp32_size_bytes": 24_900_000,
        "decision_disagreement_vs_dynamic_int8": 0.0016,
        "checked_on": "624 records",
        "converted_from": {"decision_disagreement_vs_fp32": 0.0049},
    }
    assert bm.quantized_cell(card(SINGLE, {"quantized": converted})) == (
        "INT8 (FP32 24.90 MB; 0.2% of decisions changed on 624 records against the dynamic INT8 file it replaced; "
        "that file changed 0.5% against FP32)"
    )


def test_card_figure_cells() -> None:
    spec = OperatingPointSpec(
        threshold=0.332397,
        criterion="J",
        sensitivity=0.8753,
        specificity=0.9275,
        sensitivity_wilson_low=0.8401,
        positives=417,
    )
    assert bm.op_cell(spec) == "t 0.332: sens 0.875 (Wilson ≥ 0.840, 417 pos.), spec 0.927"
    assert bm.op_cell(None) == "not on the card"
    cal = Calibration(temperature=0.8854, fitted_on="v", ece_before=0.0382, ece_after=0.0337)
    assert bm.calibration_cell(card(SINGLE, calibration=cal)) == "T 0.885; ECE 0.038 → 0.034"
    assert bm.calibration_cell(card(SINGLE)) == "none"
    ev = Evaluation(
        split="out-of-fold (cross-validation)",
        dataset_path="d",
        dataset_digest="x",
        n=1024,
        metrics={"accuracy": MetricValue(value=0.90625, ci_low=0.8877, ci_high=0.9238)},
        target=Target(metric="accuracy", threshold=0.95, met=False),
    )
    assert bm.accuracy_cell(ev) == "0.906 [0.888, 0.924] (n=1024, out-of-fold (cross-validation))"
    assert bm.accuracy_cell(None) == "not on the card"


DOC = """# Benchmarks

## Current figures

Intro.

| what | figure | goal | met? | measured |
| --- | --- | --- | --- | --- |
| ECG: served / in-process p50 (one client) | 1.39× | ≤ 2× | yes | 2026-11-26 00:41 |
| mutation score | 91.9 % | — | — | 2026-11-29 |

Note below the table.

## History

| shipped model not-current | x | y | z | w |
"""


def test_update_current_figures_adds_then_replaces_its_rows_only() -> None:
    rows = ["| shipped model a: x | 1 | ≤ 10 MB | yes | t1 |", "| shipped model b: x | 2 | ≤ 10 MB | yes | t1 |"]
    once = bm.update_current_figures(DOC, rows)
    table = [line for line in once.split("\n") if line.startswith("|")]
    assert table[2:6] == [
        "| ECG: served / in-process p50 (one client) | 1.39× | ≤ 2× | yes | 2026-11-26 00:41 |",
        "| mutation score | 91.9 % | — | — | 2026-11-29 |",
        *rows,
    ]
    assert "Note below the table." in once and once.endswith("| shipped model not-current | x | y | z | w |\n")
    again = bm.update_current_figures(once, ["| shipped model a: x | 3 | ≤ 10 MB | yes | t2 |"])
    assert again == DOC.replace(
        "| mutation score | 91.9 % | — | — | 2026-11-29 |\n",
        "| mutation score | 91.9 % | — | — | 2026-11-29 |\n| shipped model a: x | 3 | ≤ 10 MB | yes | t2 |\n",
    )


def test_update_current_figures_needs_the_table() -> None:
    with pytest.raises(ValueError, match="Current figures"):
        bm.update_current_figures("# Benchmarks\n", [])
    with pytest.raises(ValueError, match="no table"):
        bm.update_current_figures("## Current figures\n\ntext\n\n## History\n\n| a | b |\n", [])


def test_rows_of_one_model() -> None:
    m = bm.Measured(Path("shipped/ecg-rhythm"), card(SINGLE), 6_232_630, "ab" * 32, studies="3 records")
    m.threads = [1, 2]
    m.full = {1: [10.0, 12.0, 30.0], 2: [11.0, 11.0, 11.0]}
    m.infer = {1: [5.0, 5.0, 5.0], 2: [4.0, 4.0, 4.0]}
    (row,) = bm.current_rows([m], "2026-11-30 01:00")
    assert row == (
        "| shipped model ecg-rhythm: ONNX size; training time; in-process read + preprocess + infer p50 / p95 "
        "| 6.23 MB; 33.0 min (`train_seconds`); 12.0 / 28.2 ms at 1 thr., 11.0 / 11.0 ms at 2 thr. "
        "| size ≤ 10 MB | yes | 2026-11-30 01:00 |"
    )
    lines = bm.model_rows([m])
    assert lines[2].startswith("| ecg-rhythm (`abababababab`) | 6.23 (≤ 10 MB) | no (FP32) | 1 | 33.0 min")
    assert lines[2].endswith("| 12.0 / 28.2 | 11.0 / 11.0 | 5.0 / 5.0 | 4.0 / 4.0 | 3 records |")
    assert lines[6].startswith("| ecg-rhythm | not recorded on the card | not on the card | not on the card | none |")


def test_a_wfdb_folder_without_reference_gives_a_few_long_records(tmp_path: Path) -> None:
    for r in ("100", "101", "102", "103", "104"):
        (tmp_path / f"{r}.hea").write_text(f"{r} 2 360 650000\n")
        (tmp_path / f"{r}.dat").write_bytes(b"\x00" * 8)
    (tmp_path / "105.hea").write_text("105 2 360 650000\n")  # no signal file: not a study
    studies, what = bm.load_studies(tmp_path, 100)
    assert len(studies) == bm.LONG_RECORD_STUDIES
    for study in studies:
        header = next(name for name in study if name.endswith(".hea"))
        assert set(study) == {header, header.replace(".hea", ".dat")}
    assert "105" not in what and f"{bm.LONG_RECORD_STUDIES} of the 5 WFDB records" in what
