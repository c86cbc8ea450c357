"""The ``ecg-rhythm`` task definition: classes, input spec, preprocessing, windows, training view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb

from prescreen.datasets.ecg import EcgRecord
from prescreen.errors import InvalidStudyError
from prescreen.models.networks import ResNet1d
from prescreen.models.task import Task, get_task

SHIPPED_CARD = Path(__file__).resolve().parents[2] / "prescreen" / "shipped" / "ecg-rhythm" / "card.json"


@pytest.fixture(scope="module")
def task() -> Task:
    return get_task("ecg-rhythm")


def test_classes_follow_cinc_2017_and_only_normal_is_unflagged(task: Task) -> None:
    assert task.classes == ("normal", "af", "other", "noisy")
    assert task.normal_classes == ("normal",)
    assert task.normal_index == [0]
    assert task.default_data == "cinc2017"


def test_input_spec_is_30_s_at_150_hz_with_half_overlap(task: Task) -> None:
    spec = task.input_spec
    assert spec["kind"] == "ecg"
    assert spec["sampling_rate_hz"] == 150.0
    assert spec["window_samples"] == 30 * 150
    assert spec["window_stride_samples"] == spec["window_samples"] // 2
    assert spec["tensor"].startswith("float32 (batch, 1,")  # what task.windows() yields


def test_shipped_card_describes_this_task(task: Task) -> None:
    """The shipped model was trained for this definition: classes and input spec must not drift."""
    card = json.loads(SHIPPED_CARD.read_text())
    assert card["task"] == task.name
    assert card["classes"] == list(task.classes)
    assert card["normal_classes"] == list(task.normal_classes)
    assert card["input_spec"] == json.loads(json.dumps(task.input_spec))


def _record(seconds: float, fs: float, leads: dict[str, np.ndarray] | None = None) -> EcgRecord:
    t = np.arange(int(seconds * fs)) / fs
    leads = leads or {"ECG": np.sin(2 * np.pi * 7 * t)}
    sig = np.stack([f(t) if callable(f) else f for f in leads.values()]).astype(np.float32)
    return EcgRecord(sig, fs, tuple(leads))


def test_preprocess_resamples_to_150_hz_and_z_scores(task: Task) -> None:
    x = task.preprocess(_record(20.0, 500.0))
    assert x.ndim == 1
    assert x.dtype == np.float32
    assert len(x) == pytest.approx(20 * 150, abs=2)
    assert abs(float(x.mean())) < 0.05
    assert float(x.std()) == pytest.approx(1.0, abs=0.05)


def test_preprocess_picks_lead_ii_of_a_multi_lead_record(task: Task) -> None:
    fs, seconds = 500.0, 12.0
    t = np.arange(int(seconds * fs)) / fs
    lead_i = np.sin(2 * np.pi * 2.0 * t)
    lead_ii = np.sin(2 * np.pi * 9.0 * t + 0.4)
    lead_iii = np.cos(2 * np.pi * 15.0 * t)
    x = task.preprocess(_record(seconds, fs, {"I": lead_i, "II": lead_ii, "III": lead_iii}))
    t150 = np.arange(len(x)) / 150.0

    def corr(ref: np.ndarray) -> float:
        return abs(float(np.corrcoef(x[300:-300], ref[300:-300])[0, 1]))  # 2 s off each edge: filter effects

    assert corr(np.sin(2 * np.pi * 9.0 * t150 + 0.4)) > 0.95
    assert corr(np.sin(2 * np.pi * 2.0 * t150)) < 0.2


def test_preprocess_refuses_records_too_short_to_judge(task: Task) -> None:
    with pytest.raises(InvalidStudyError, match="at least 3 s"):
        task.preprocess(_record(2.0, 300.0))


def test_preprocess_refuses_a_flat_line(task: Task) -> None:
    with pytest.raises(InvalidStudyError, match="flat"):
        task.preprocess(_record(10.0, 300.0, {"ECG": np.zeros(3000)}))


@pytest.mark.parametrize(("seconds", "n_windows"), [(10, 1), (30, 1), (45, 2), (60, 3), (61, 4)])
def test_windows_of_a_preprocessed_record(task: Task, seconds: int, n_windows: int) -> None:
    x = np.random.default_rng(0).normal(size=seconds * 150).astype(np.float32)
    w = task.windows(x)
    assert w.shape == (n_windows, 1, 4500)
    assert w.dtype == np.float32
    if seconds >= 30:
        np.testing.assert_array_equal(w[0, 0], x[:4500])
        np.testing.assert_array_equal(w[-1, 0], x[-4500:])  # the tail is never dropped
    else:
        np.testing.assert_array_equal(w[0, 0, : len(x)], x)
        assert not w[0, 0, len(x) :].any()  # zero-padded


@pytest.mark.parametrize("length", [1000, 4500, 12000])
def test_train_view_is_one_fixed_length_window_reproducible_by_seed(task: Task, length: int) -> None:
    x = np.random.default_rng(1).normal(size=length).astype(np.float32)
    a = task.train_view(x, np.random.default_rng(7))
    b = task.train_view(x, np.random.default_rng(7))
    assert a.shape == (1, 4500)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_network_takes_windows_and_gives_one_output_per_class(task: Task) -> None:
    net = task.build_network()
    assert isinstance(net, ResNet1d)
    x = torch.from_numpy(task.windows(np.random.default_rng(0).normal(size=9000).astype(np.float32)))
    with torch.inference_mode():
        out = net.eval()(x)
    assert out.shape == (3, len(task.classes))


def test_read_files_reads_a_wfdb_record_sent_as_files(task: Task, tmp_path: Path) -> None:
    fs = 300
    t = np.arange(15 * fs) / fs
    sig = np.sin(2 * np.pi * 1.2 * t)[:, None]
    wfdb.wrsamp(
        "rec", fs=fs, units=["mV"], sig_name=["ECG"], p_signal=sig, fmt=["16"], adc_gain=[1000.0], baseline=[0],
        write_dir=str(tmp_path),
    )  # fmt: skip
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    record = task.read_files(files)
    assert record.fs == fs
    assert record.n_samples == 15 * fs
    np.testing.assert_allclose(record.signal[0], sig[:, 0], atol=2e-3)
    assert len(task.preprocess(record)) == pytest.approx(15 * 150, abs=2)


def test_train_defaults_are_a_valid_run_config(task: Task, tmp_path: Path) -> None:
    from prescreen.training.config import RunConfig

    cfg = RunConfig(task=task.name, data=tmp_path, out=tmp_path / "run", **task.train_defaults)
    assert cfg.epochs == task.train_defaults["epochs"]
