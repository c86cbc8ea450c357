"""ECG transforms: lead choice, resampling, filtering, normalisation, cropping, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.readers import read_wfdb
from prescreen.datasets.transforms import (
    BandPass,
    Compose,
    CropOrPad,
    MinDuration,
    Resample,
    SelectLead,
    Standardize,
    Windows,
    augment_ecg,
    ecg_preprocess,
)
from prescreen.errors import InvalidStudyError


def _rec(signal: np.ndarray, fs: float, names: tuple[str, ...] | None = None) -> EcgRecord:
    sig = np.atleast_2d(np.asarray(signal, dtype=np.float32))
    names = names or tuple(f"ch{i}" for i in range(sig.shape[0]))
    return EcgRecord(sig, fs, names)


def _sine(freq: float, fs: float, seconds: float, amp: float = 1.0) -> np.ndarray:
    t = np.arange(round(fs * seconds)) / fs
    return amp * np.sin(2 * np.pi * freq * t)


def _dominant_hz(x: np.ndarray, fs: float) -> float:
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    return float(np.argmax(spectrum) * fs / len(x))


# --- SelectLead ----------------------------------------------------------------------------


def test_select_lead_single_lead_passes_through() -> None:
    rec = _rec(_sine(1, 100, 5), 100, ("V5",))  # not a preferred name, but the only lead
    assert SelectLead()(rec) is rec


def test_select_lead_picks_ii_of_twelve() -> None:
    names = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    sig = np.arange(12, dtype=np.float32)[:, None] * np.ones((12, 50), dtype=np.float32)
    out = SelectLead()(_rec(sig, 100, names))
    assert out.lead_names == ("II",)
    assert out.signal.shape == (1, 50)
    assert np.all(out.signal == 1.0)  # row 1 is lead II
    assert out.fs == 100


def test_select_lead_is_case_insensitive_and_ordered() -> None:
    sig = np.stack([np.zeros(20), np.ones(20), 2 * np.ones(20)])
    out = SelectLead()(_rec(sig, 100, ("V1", "mlii", "ECG")))
    assert out.lead_names == ("mlii",)  # MLII comes before ECG in the preference order
    assert np.all(out.signal == 1.0)


def test_select_lead_without_preferred_lead_raises() -> None:
    sig = np.ones((2, 20))
    with pytest.raises(InvalidStudyError, match="V1, V2 but none of II"):
        SelectLead()(_rec(sig, 100, ("V1", "V2")))


# --- Resample -------------------------------------------------------------------------------


def test_resample_keeps_dominant_frequency() -> None:
    x = _sine(5.0, 300.0, 10.0)
    out = Resample(150.0)(_rec(x, 300.0))
    assert out.fs == 150.0
    assert out.n_samples == len(x) // 2
    assert out.signal.dtype == np.float32
    assert _dominant_hz(out.signal[0], out.fs) == pytest.approx(5.0, abs=0.1)
    core = out.signal[0, 100:-100]
    assert float(np.abs(core).max()) == pytest.approx(1.0, abs=0.05)


def test_resample_non_integer_ratio() -> None:
    x = _sine(3.0, 360.0, 10.0)
    out = Resample(150.0)(_rec(x, 360.0))
    assert out.n_samples == 1500
    assert _dominant_hz(out.signal[0], out.fs) == pytest.approx(3.0, abs=0.1)


def test_resample_same_rate_is_identity() -> None:
    rec = _rec(_sine(5.0, 150.0, 4.0), 150.0)
    assert Resample(150.0)(rec) is rec


# --- BandPass -------------------------------------------------------------------------------


def test_bandpass_removes_dc_and_drift() -> None:
    fs = 250.0
    t = np.arange(int(fs * 60)) / fs
    x = 3.0 + 1.0 * np.sin(2 * np.pi * 0.1 * t)
    out = BandPass(0.5, 40.0)(_rec(x, fs)).signal[0]
    assert abs(float(out.mean())) < 0.05
    core = out[int(5 * fs) : -int(5 * fs)]
    assert float(np.abs(core).max()) < 0.1  # the input swings between 2 and 4 mV


def test_bandpass_keeps_10hz_amplitude() -> None:
    fs = 250.0
    x = 2.0 + _sine(10.0, fs, 20.0, amp=1.0)
    out = BandPass(0.5, 40.0)(_rec(x, fs)).signal[0]
    core = out[int(2 * fs) : -int(2 * fs)]
    amplitude = float(np.sqrt(2) * core.std())
    assert amplitude == pytest.approx(1.0, rel=0.1)
    assert abs(float(core.mean())) < 0.05


def test_bandpass_attenuates_high_frequency() -> None:
    fs = 500.0
    out = BandPass(0.5, 40.0)(_rec(_sine(150.0, fs, 20.0), fs)).signal[0]
    core = out[int(5 * fs) : -int(5 * fs)]  # away from filtfilt's edge transients
    assert float(np.abs(core).max()) < 0.01


def test_bandpass_low_rate_clamps_high_cutoff() -> None:
    """At 50 Hz the 40 Hz cut-off lies above Nyquist; it must be clamped, not crash."""
    fs = 50.0
    out = BandPass(0.5, 40.0)(_rec(_sine(5.0, fs, 20.0), fs))
    assert out.signal.shape == (1, 1000)
    assert np.isfinite(out.signal).all()


# --- MinDuration ----------------------------------------------------------------------------


def test_min_duration_rejects_short_record() -> None:
    with pytest.raises(InvalidStudyError, match=r"lasts 2\.0 s; at least 3 s"):
        MinDuration(3.0)(_rec(np.ones(500), 250.0))


def test_min_duration_accepts_long_enough_record() -> None:
    rec = _rec(np.ones(750), 250.0)
    assert MinDuration(3.0)(rec) is rec


# --- Standardize ----------------------------------------------------------------------------


def test_standardize_zero_mean_unit_std() -> None:
    x = 5.0 + 0.3 * _sine(1.3, 250.0, 10.0) + 0.1 * _sine(17.0, 250.0, 10.0)
    z = Standardize()(_rec(x, 250.0))
    assert z.ndim == 1
    assert z.shape == (len(x),)
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-4
    assert float(z.std()) == pytest.approx(1.0, abs=1e-4)


def test_standardize_flat_signal_raises() -> None:
    with pytest.raises(InvalidStudyError, match="flat"):
        Standardize()(_rec(np.full(1000, 0.7), 250.0))


def test_standardize_clips_outliers() -> None:
    x = np.zeros(10_000)
    x[5000] = 1.0  # z of the spike is about sqrt(10000) = 100
    z = Standardize(clip=20.0)(_rec(x, 250.0))
    assert float(z.max()) == pytest.approx(20.0)
    assert int(np.argmax(z)) == 5000


# --- CropOrPad ------------------------------------------------------------------------------


def test_crop_centre() -> None:
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(CropOrPad(4)(x), [3, 4, 5, 6])


def test_pad_with_zeros_at_the_end() -> None:
    x = np.arange(1, 4, dtype=np.float32)
    out = CropOrPad(6)(x)
    np.testing.assert_array_equal(out, [1, 2, 3, 0, 0, 0])
    assert out.dtype == np.float32


def test_pad_two_dimensional_along_last_axis() -> None:
    x = np.ones((1, 3), dtype=np.float32)
    out = CropOrPad(5)(x)
    assert out.shape == (1, 5)
    np.testing.assert_array_equal(out, [[1, 1, 1, 0, 0]])


def test_random_crop_reproducible_with_seeded_rng() -> None:
    x = np.arange(1000, dtype=np.float32)
    a = CropOrPad(100)(x, np.random.default_rng(7))
    b = CropOrPad(100)(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (100,)
    np.testing.assert_array_equal(np.diff(a), np.ones(99))  # a contiguous slice
    starts = {int(CropOrPad(100)(x, np.random.default_rng(s))[0]) for s in range(10)}
    assert len(starts) > 1  # the start really is random


def test_random_pad_keeps_the_signal() -> None:
    x = np.arange(1, 11, dtype=np.float32)
    a = CropOrPad(30)(x, np.random.default_rng(3))
    b = CropOrPad(30)(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    nz = np.flatnonzero(a)
    np.testing.assert_array_equal(a[nz[0] : nz[0] + 10], x)
    assert float(a.sum()) == float(x.sum())


# --- Windows --------------------------------------------------------------------------------


def test_windows_shape_and_cover_the_end() -> None:
    x = np.arange(260, dtype=np.float32)
    w = Windows(100, 50)(x)
    assert w.shape == (5, 1, 100)  # starts 0, 50, 100, 150 and 160 aligned to the end
    np.testing.assert_array_equal(w[0, 0], x[:100])
    np.testing.assert_array_equal(w[1, 0], x[50:150])
    np.testing.assert_array_equal(w[-1, 0], x[-100:])


def test_windows_exact_multiple_has_no_duplicate() -> None:
    x = np.arange(300, dtype=np.float32)
    w = Windows(100, 100)(x)
    assert w.shape == (3, 1, 100)
    np.testing.assert_array_equal(w.reshape(-1), x)


def test_windows_short_signal_padded_to_one_window() -> None:
    x = np.arange(1, 31, dtype=np.float32)
    w = Windows(100, 50)(x)
    assert w.shape == (1, 1, 100)
    np.testing.assert_array_equal(w[0, 0, :30], x)
    assert not w[0, 0, 30:].any()


# --- augmentation ---------------------------------------------------------------------------


def test_augment_reproducible_and_shape_preserving() -> None:
    x = Standardize()(_rec(_sine(1.2, 150.0, 30.0) + 0.2 * _sine(9.0, 150.0, 30.0), 150.0))
    a = augment_ecg(x, np.random.default_rng(11))
    b = augment_ecg(x, np.random.default_rng(11))
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    assert a.dtype == np.float32
    assert not np.allclose(a, x)
    outputs = [augment_ecg(x, np.random.default_rng(s)) for s in range(5)]
    assert any(not np.allclose(outputs[0], o) for o in outputs[1:])


def test_augment_keeps_the_signal_recognisable() -> None:
    x = Standardize()(_rec(_sine(1.2, 150.0, 30.0), 150.0))
    for seed in range(20):
        y = augment_ecg(x, np.random.default_rng(seed))
        corr = abs(float(np.corrcoef(x, y)[0, 1]))
        assert corr > 0.8


# --- the whole chain ------------------------------------------------------------------------


def test_compose_applies_in_order() -> None:
    chain = Compose([lambda v: v + 1, lambda v: v * 10])
    assert chain(1) == 20


def test_ecg_preprocess_end_to_end(tmp_path: Path) -> None:
    fs = 250
    lead_i = _sine(7.0, fs, 12.0, amp=0.5)
    lead_ii = 1.5 + _sine(1.25, fs, 12.0, amp=1.0)  # offset must go, rhythm must stay
    wfdb.wrsamp(
        "rec",
        fs=fs,
        units=["mV", "mV"],
        sig_name=["I", "II"],
        p_signal=np.stack([lead_i, lead_ii], axis=1),
        fmt=["16", "16"],
        adc_gain=[1000, 1000],
        baseline=[0, 0],
        write_dir=str(tmp_path),
    )
    z = ecg_preprocess(150.0)(read_wfdb(tmp_path / "rec"))
    assert z.shape == (1800,)  # 12 s at 150 Hz, one lead
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-3
    assert float(z.std()) == pytest.approx(1.0, abs=1e-3)
    assert _dominant_hz(z, 150.0) == pytest.approx(1.25, abs=0.1)  # lead II, not lead I


def test_ecg_preprocess_rejects_short_record() -> None:
    with pytest.raises(InvalidStudyError, match="at least 3 s"):
        ecg_preprocess(150.0)(_rec(_sine(1.0, 250.0, 2.0), 250.0, ("II",)))
