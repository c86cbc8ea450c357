"""The ``holter`` task: registration, whole-record analysis chunk by chunk, noise handling and the
shipped model on a real MIT-BIH record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.holter import HolterRecord
from prescreen.domain import FileKind, RecordLength
from prescreen.errors import DatasetError, ModelError, NotAssessableError
from prescreen.evaluation.holter import match_beats
from prescreen.models import holter_beats
from prescreen.models.card import ModelCard
from prescreen.models.holter import HolterResult, analyse_holter, analyse_record
from prescreen.models.holter_beats import CHANNELS, WINDOW, extract_beats
from prescreen.models.onnx_model import OnnxModel
from prescreen.models.task import Task, get_task
from tests.conftest import data_dir
from tests.peers import DATA_HINT, require_peer

SHIPPED = Path(__file__).resolve().parents[2] / "prescreen" / "shipped" / "holter"
SUMMARY_KEYS = {
    "duration_s", "analysed_s", "not_analysable_s", "lead", "fs", "beats", "heart_rate", "burden", "af_minutes",
    "counts", "events", "events_total", "flag_reasons", "flag_rule",
}  # fmt: skip


def all_normal(x: np.ndarray) -> np.ndarray:
    assert x.dtype == np.float32 and x.shape[1:] == (CHANNELS, WINDOW)
    out = np.zeros((len(x), 5), dtype=np.float32)
    out[:, 0] = 1.0
    return out


@pytest.fixture(scope="module")
def task() -> Task:
    return get_task("holter")


@pytest.fixture(scope="module")
def mitdb() -> Path:
    folder = data_dir() / "mitdb"
    require_peer(f"the MIT-BIH records under {folder}", (folder / "101.hea").is_file(), DATA_HINT)
    return folder


@pytest.fixture(scope="module")
def analysed(mitdb: Path) -> tuple[HolterResult, list[float]]:
    calls: list[float] = []
    with HolterRecord.from_path(mitdb / "101") as record:
        return analyse_holter(record, all_normal, calls.append), calls


def test_task_declares_beat_classes_and_long_records(task: Task) -> None:
    assert task.classes == ("N", "S", "V", "F", "Q") and task.normal_classes == ("N",)
    assert task.default_data == "mitdb" and task.analyse is analyse_record
    assert task.accepts.length == RecordLength.LONG
    assert task.accepts.takes(FileKind.WFDB, None, 1800.0) and not task.accepts.takes(FileKind.WFDB, None, 30.0)
    assert task.accepts.takes(FileKind.DICOM_WAVEFORM, None, 86400.0)
    assert task.input_spec["tensor"] == f"float32 (batch, {CHANNELS}, {WINDOW})"
    net = task.build_network().eval()
    with torch.inference_mode():
        assert net(torch.zeros(2, CHANNELS, WINDOW)).shape == (2, 5)


def test_generic_window_steps_refuse_with_the_holter_path(task: Task) -> None:
    for step in (task.preprocess, task.windows):
        with pytest.raises(ModelError, match="prescreen train holter"):
            step(np.zeros(10, dtype=np.float32))
    with pytest.raises(ModelError, match="train_view"):
        task.train_view(np.zeros(10, dtype=np.float32), np.random.default_rng(0))
    with pytest.raises(DatasetError, match="prescreen train holter"):
        task.load_dataset(Path("x"), None, False, "train")


@pytest.mark.data
def test_summary_shape_of_a_real_record(analysed: tuple[HolterResult, list[float]]) -> None:
    result, _ = analysed
    s = result.found.summary
    assert set(s) == SUMMARY_KEYS
    assert s["lead"] == "MLII" and s["fs"] == 360.0
    assert s["duration_s"] == pytest.approx(1805.556, abs=0.01) and s["not_analysable_s"] == 0.0
    assert 1850 <= s["beats"]["N"] == sum(s["beats"].values()) <= 1880  # 1865 reference beats
    assert 60 < s["heart_rate"]["mean"] < 80
    assert s["heart_rate"]["min"]["bpm"] <= s["heart_rate"]["mean"] <= s["heart_rate"]["max"]["bpm"]
    assert s["burden"] == {"S": 0.0, "V": 0.0, "af": 0.0}
    json.dumps(s)


@pytest.mark.data
def test_progress_rises_to_one(analysed: tuple[HolterResult, list[float]]) -> None:
    _, calls = analysed
    assert len(calls) >= 7  # one per 5-min chunk, and the end
    assert calls == sorted(calls) and calls[-1] == 1.0 and 0 < calls[0] < 1


@pytest.mark.data
def test_chunk_borders_neither_lose_nor_double_beats(
    mitdb: Path, analysed: tuple[HolterResult, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(holter_beats, "CHUNK_S", 97.0)
    with HolterRecord.from_path(mitdb / "101") as record:
        other = extract_beats(record)
    base = analysed[0].beats.samples
    ref_idx, _ = match_beats(base, other.samples, 18)
    assert len(ref_idx) >= 0.998 * len(base)
    assert abs(len(other) - len(base)) <= 3
    assert np.all(np.diff(other.samples) > 0)


@pytest.mark.data
def test_record_analysis_scores_and_labels_consistently(mitdb: Path) -> None:
    with HolterRecord.from_path(mitdb / "101") as record:
        analysis = analyse_record(record, all_normal)
    assert analysis.label == "normal" and 0.0 <= analysis.score < 1.0
    assert analysis.probabilities == {"N": 1.0, "S": 0.0, "V": 0.0, "F": 0.0, "Q": 0.0}


def crop(mitdb: Path, seconds: int) -> EcgRecord:
    with HolterRecord.from_path(mitdb / "101") as record:
        signal = record.read(0, seconds * 360)
    return EcgRecord(signal=signal, fs=360.0, lead_names=record.lead_names)


@pytest.mark.data
def test_flat_and_saturated_stretches_are_not_analysed(mitdb: Path) -> None:
    ecg = crop(mitdb, 900)
    signal = ecg.signal.copy()
    signal[0, 300 * 360 : 420 * 360] = 0.0  # flat
    signal[0, 600 * 360 : 660 * 360] = 5.12  # stuck at the rail
    result = analyse_holter(EcgRecord(signal, 360.0, ecg.lead_names), all_normal)
    s = result.found.summary
    assert s["not_analysable_s"] == pytest.approx(180.0)
    assert s["analysed_s"] == pytest.approx(720.0)
    times = result.beats.times_s
    assert not np.any((times > 300.5) & (times < 419.5)) and not np.any((times > 600.5) & (times < 659.5))
    noise = [e for e in s["events"] if e["kind"] == "not-analysable"]
    assert [(e["start_s"], e["end_s"]) for e in noise] == [(300.0, 420.0), (600.0, 660.0)]
    assert s["counts"]["pauses"] == 0


@pytest.mark.data
def test_a_flat_record_is_not_assessable(mitdb: Path) -> None:
    ecg = crop(mitdb, 700)
    flat = EcgRecord(np.zeros_like(ecg.signal), 360.0, ecg.lead_names)
    with pytest.raises(NotAssessableError, match="flat or saturated"):
        analyse_record(flat, all_normal)


@pytest.mark.data
def test_a_classifier_of_the_wrong_shape_is_refused(mitdb: Path) -> None:
    with pytest.raises(ModelError, match="expected"):
        analyse_record(crop(mitdb, 120), lambda x: np.zeros((len(x), 3), dtype=np.float32))


@pytest.fixture(scope="module")
def shipped() -> OnnxModel:
    if not (SHIPPED / "model.onnx").is_file():
        pytest.skip("no shipped holter model yet")
    return OnnxModel.from_folder(SHIPPED)


def test_shipped_card_is_complete_and_small(shipped: OnnxModel) -> None:
    card = ModelCard.load(SHIPPED / "card.json")
    assert card.task == "holter" and card.classes == ["N", "S", "V", "F", "Q"]
    assert card.operating_threshold == 1.0 and card.thresholds() == {"balanced": 1.0, "safety": 0.5}
    assert card.validation is not None and "by record" in card.validation.split
    assert card.flag_rule.startswith("Flagged when any of")
    assert (SHIPPED / "model.onnx").stat().st_size < 3_000_000
    assert card.missing_for_release() == []  # operating points, calibration, score reference, shift tables
    assert card.validation.metrics["qrs_sensitivity"].value is not None


@pytest.mark.data
def test_shipped_model_finds_the_ventricular_bigeminy_of_119(mitdb: Path, shipped: OnnxModel) -> None:
    with HolterRecord.from_path(mitdb / "119") as record:
        analysis = analyse_record(record, shipped.predict_windows)
    s = analysis.summary
    assert s["burden"]["V"] > 15.0  # 444 of 1987 reference beats are V (22 %)
    assert analysis.score == 1.0 and analysis.label in ("nsvt", "v-burden")
    assert any("burden" in r or "NSVT" in r for r in s["flag_reasons"])
    assert sum(analysis.probabilities.values()) == pytest.approx(1.0)


def spikes(n: int, at: list[int], height: float = 1.0) -> np.ndarray:
    x = np.zeros(n, dtype=np.float32)
    for t in at:
        x[t - 3 : t + 4] = height * np.array([0.2, 0.5, 0.8, 1.0, 0.8, 0.5, 0.2], dtype=np.float32)
    return x


def test_search_back_finds_a_missed_beat() -> None:
    fs = 360.0
    beats = [int(0.8 * fs * k) + 100 for k in range(20)]
    signal = spikes(8000, beats)
    found = holter_beats.search_back(signal, np.asarray(beats[:10] + beats[11:], dtype=np.int64), fs)
    assert beats[10] in found.tolist() and len(found) == 20


def test_a_gap_the_other_lead_fills_is_lost_not_a_pause() -> None:
    fs = 360.0
    beats = [int(0.8 * fs * k) + 100 for k in range(30)]
    primary = np.asarray(beats[:10] + beats[15:], dtype=np.int64)  # 4 s without beats
    gaps = holter_beats.lost_gaps(primary, spikes(12000, beats), fs)
    assert len(gaps) == 1 and beats[9] < gaps[0][0] < gaps[0][1] < beats[15]
    assert holter_beats.lost_gaps(primary, spikes(12000, [int(b) for b in primary]), fs) == []


def test_rr_features_of_a_premature_beat() -> None:
    times = np.arange(0, 60, 1.0)
    times[30] -= 0.4  # premature by 40 %
    rr = holter_beats.rr_features(times)
    names = holter_beats.RR_FEATURES
    assert rr.shape == (60, holter_beats.N_RR)
    assert rr[30, names.index("pre_rr_s")] == pytest.approx(0.6)
    assert rr[30, names.index("post_rr_s")] == pytest.approx(1.4)
    assert rr[30, names.index("pre/local")] < 0.7 and rr[10, names.index("pre/local")] == pytest.approx(1.0)
    excluded = holter_beats.rr_features(times, [(40.2, 40.8)])
    assert excluded[41, names.index("pre_rr_s")] == pytest.approx(excluded[41, names.index("local_rr_s")])


def test_merge_intervals() -> None:
    assert holter_beats.merge_intervals([(5.0, 6.0), (0.0, 2.0), (1.5, 3.0), (3.0, 4.0)]) == [(0.0, 4.0), (5.0, 6.0)]


@pytest.mark.data
def test_screen_files_of_a_whole_record_task_analyses_the_record(mitdb: Path, shipped: OnnxModel) -> None:
    files = {f"119{ext}": (mitdb / f"119{ext}").read_bytes() for ext in (".hea", ".dat")}
    finding = shipped.screen_files(files)
    assert finding.task == "holter" and finding.flagged
    assert finding.summary is not None and finding.summary["burden"]["V"] > 15.0
