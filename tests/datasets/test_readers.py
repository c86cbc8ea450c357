"""ECG readers: WFDB records written here, real source formats, DICOM waveforms, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file

from prescreen.datasets.readers import read_dicom_ecg, read_ecg_files, read_wfdb
from prescreen.errors import InvalidStudyError, UnsupportedStudyError

FS = 250
SECONDS = 10
N = FS * SECONDS


def _sines(n_leads: int) -> np.ndarray:
    """samples × leads: lead k is a (k+1) Hz sine of amplitude 1/(k+1) mV plus a small offset."""
    t = np.arange(N) / FS
    cols = [np.sin(2 * np.pi * (k + 1) * t) / (k + 1) + 0.1 * k for k in range(n_leads)]
    return np.stack(cols, axis=1)


def _write(
    folder: Path,
    name: str = "rec",
    fmt: str = "16",
    leads: tuple[str, ...] = ("ECG",),
    gain: float = 1000.0,
    units: str = "mV",
    scale: float = 1.0,
) -> np.ndarray:
    """Write a WFDB record of known sines into ``folder``; returns the written samples × leads in ``units``."""
    sig = _sines(len(leads)) * scale
    wfdb.wrsamp(
        name,
        fs=FS,
        units=[units] * len(leads),
        sig_name=list(leads),
        p_signal=sig,
        fmt=[fmt] * len(leads),
        adc_gain=[gain] * len(leads),
        baseline=[0] * len(leads),
        write_dir=str(folder),
    )
    return sig


def _edit_header_first_line(header: Path, index: int, value: str) -> None:
    lines = header.read_text().splitlines()
    tokens = lines[0].split()
    tokens[index] = value
    lines[0] = " ".join(tokens)
    header.write_text("\n".join(lines) + "\n")


# --- WFDB written here ---------------------------------------------------------------------


def test_read_wfdb_format_16_single_lead(tmp_path: Path) -> None:
    sig = _write(tmp_path, fmt="16", leads=("ECG",), gain=1000.0)
    rec = read_wfdb(tmp_path / "rec")
    assert rec.signal.shape == (1, N)
    assert rec.signal.dtype == np.float32
    assert rec.fs == FS
    assert rec.lead_names == ("ECG",)
    assert rec.duration_s == pytest.approx(SECONDS)
    # gain 1000/mV → quantisation step 0.001 mV
    np.testing.assert_allclose(rec.signal, sig.T, atol=6e-4)
    assert rec.source["format"] == "wfdb"
    assert rec.source["fmt"] == ["16"]


def test_read_wfdb_format_16_multi_lead_orientation(tmp_path: Path) -> None:
    sig = _write(tmp_path, fmt="16", leads=("I", "II", "V1"), gain=1000.0)
    rec = read_wfdb(tmp_path / "rec")
    assert rec.signal.shape == (3, N)  # leads × samples, not samples × leads
    assert rec.lead_names == ("I", "II", "V1")
    for k in range(3):
        np.testing.assert_allclose(rec.signal[k], sig[:, k], atol=6e-4)


def test_read_wfdb_format_212_two_leads(tmp_path: Path) -> None:
    sig = _write(tmp_path, fmt="212", leads=("MLII", "V1"), gain=200.0)
    rec = read_wfdb(tmp_path / "rec")
    assert rec.signal.shape == (2, N)
    assert rec.fs == FS
    assert rec.lead_names == ("MLII", "V1")
    assert rec.source["fmt"] == ["212", "212"]
    # gain 200/mV → quantisation step 0.005 mV
    np.testing.assert_allclose(rec.signal, sig.T, atol=3e-3)


def test_read_wfdb_converts_microvolts_to_millivolts(tmp_path: Path) -> None:
    sig_uv = _write(tmp_path, fmt="16", leads=("ECG",), gain=1.0, units="uV", scale=1000.0)
    rec = read_wfdb(tmp_path / "rec")
    np.testing.assert_allclose(rec.signal[0], sig_uv[:, 0] / 1000.0, atol=1e-3)
    assert np.abs(rec.signal).max() < 2.0


# --- WFDB bad input -----------------------------------------------------------------------


def test_missing_header(tmp_path: Path) -> None:
    with pytest.raises(InvalidStudyError, match=r"header nothing\.hea not found"):
        read_wfdb(tmp_path / "nothing")


def test_header_refers_to_missing_dat(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "rec.dat").unlink()
    with pytest.raises(InvalidStudyError, match=r"refers to rec\.dat, which is missing"):
        read_wfdb(tmp_path / "rec")


def test_truncated_dat(tmp_path: Path) -> None:
    _write(tmp_path, fmt="16", leads=("I", "II"))
    dat = tmp_path / "rec.dat"
    full = dat.read_bytes()
    assert len(full) == 2 * 2 * N
    dat.write_bytes(full[: len(full) // 2])
    with pytest.raises(InvalidStudyError, match=r"rec\.dat is truncated: 5000 bytes, header implies 10000"):
        read_wfdb(tmp_path / "rec")


def test_truncated_212_dat(tmp_path: Path) -> None:
    _write(tmp_path, fmt="212", leads=("MLII", "V1"), gain=200.0)
    dat = tmp_path / "rec.dat"
    full = dat.read_bytes()
    assert len(full) == 3 * N  # 2 × 12 bits per sample frame
    dat.write_bytes(full[:-30])
    with pytest.raises(InvalidStudyError, match="truncated"):
        read_wfdb(tmp_path / "rec")


def test_header_sample_count_larger_than_data(tmp_path: Path) -> None:
    _write(tmp_path, fmt="16")
    _edit_header_first_line(tmp_path / "rec.hea", 3, str(N + 500))
    with pytest.raises(InvalidStudyError, match=rf"header implies {2 * (N + 500)}"):
        read_wfdb(tmp_path / "rec")


def test_sampling_rate_zero(tmp_path: Path) -> None:
    _write(tmp_path)
    _edit_header_first_line(tmp_path / "rec.hea", 2, "0")
    with pytest.raises(InvalidStudyError, match=r"sampling rate must be > 0"):
        read_wfdb(tmp_path / "rec")


def test_nan_samples(tmp_path: Path) -> None:
    digital = np.array([[0], [10], [-32768], [-32768], [20]] * 100, dtype=np.int64)
    wfdb.wrsamp(
        "rec",
        fs=FS,
        units=["mV"],
        sig_name=["ECG"],
        d_signal=digital,
        fmt=["16"],
        adc_gain=[1000],
        baseline=[0],
        write_dir=str(tmp_path),
    )
    with pytest.raises(InvalidStudyError, match=r"200 missing or non-numeric \(NaN\) samples"):
        read_wfdb(tmp_path / "rec")


def test_garbage_header(tmp_path: Path) -> None:
    (tmp_path / "rec.hea").write_text("this is not a header at all\n")
    with pytest.raises(InvalidStudyError, match=r"header rec\.hea cannot be parsed"):
        read_wfdb(tmp_path / "rec")


# --- read_ecg_files -----------------------------------------------------------------------


def _record_files(folder: Path, **kwargs: object) -> tuple[dict[str, bytes], np.ndarray]:
    sig = _write(folder, **kwargs)  # type: ignore[arg-type]
    files = {p.name: p.read_bytes() for p in sorted(folder.glob("rec.*"))}
    return files, sig


def test_read_ecg_files_happy_path(tmp_path: Path) -> None:
    files, sig = _record_files(tmp_path, leads=("I", "II"))
    assert set(files) == {"rec.hea", "rec.dat"}
    rec = read_ecg_files(files)
    assert rec.signal.shape == (2, N)
    assert rec.fs == FS
    assert rec.lead_names == ("I", "II")
    np.testing.assert_allclose(rec.signal, sig.T, atol=6e-4)


def test_read_ecg_files_no_files() -> None:
    with pytest.raises(InvalidStudyError, match="no file was sent"):
        read_ecg_files({})


def test_read_ecg_files_empty_file(tmp_path: Path) -> None:
    files, _ = _record_files(tmp_path)
    files["rec.dat"] = b""
    with pytest.raises(InvalidStudyError, match=r"file 'rec\.dat' is empty"):
        read_ecg_files(files)


def test_read_ecg_files_header_without_data(tmp_path: Path) -> None:
    files, _ = _record_files(tmp_path)
    with pytest.raises(InvalidStudyError, match=r"refers to rec\.dat, which is missing"):
        read_ecg_files({"rec.hea": files["rec.hea"]})


def test_read_ecg_files_unsafe_name(tmp_path: Path) -> None:
    files, _ = _record_files(tmp_path)
    with pytest.raises(InvalidStudyError, match=r"'\.\./x\.hea' is not a plain WFDB file name"):
        read_ecg_files({"../x.hea": files["rec.hea"], "rec.dat": files["rec.dat"]})


def test_read_ecg_files_two_headers(tmp_path: Path) -> None:
    files, _ = _record_files(tmp_path)
    files["other.hea"] = files["rec.hea"]
    with pytest.raises(InvalidStudyError, match="exactly one WFDB header"):
        read_ecg_files(files)


def test_read_ecg_files_data_without_header(tmp_path: Path) -> None:
    files, _ = _record_files(tmp_path)
    with pytest.raises(InvalidStudyError, match="got 0 headers"):
        read_ecg_files({"rec.dat": files["rec.dat"]})


# --- real source formats (shared data) ------------------------------------------------------


@pytest.mark.data
def test_flac_516_cinc2017(shared_data: Path) -> None:
    rec = read_wfdb(shared_data / "cinc2017" / "A00001")
    assert rec.source["fmt"] == ["516"]
    assert rec.signal.shape == (1, 9000)
    assert rec.fs == 300.0
    assert rec.lead_names == ("ECG",)
    assert np.isfinite(rec.signal).all()
    assert 0.1 < float(np.abs(rec.signal).max()) < 10.0  # millivolts, not ADC units


@pytest.mark.data
def test_matlab_v4_equals_flac(shared_data: Path) -> None:
    flac = read_wfdb(shared_data / "cinc2017" / "A00001")
    mat = read_wfdb(shared_data / "samples" / "cinc2017-mat" / "A00001")
    assert mat.signal.shape == (1, 9000)
    assert mat.fs == 300.0
    assert mat.lead_names == ("ECG",)
    assert np.allclose(mat.signal, flac.signal)


@pytest.mark.data
def test_format_212_mitdb(shared_data: Path) -> None:
    rec = read_wfdb(shared_data / "samples" / "mitdb-212" / "208")
    assert rec.source["fmt"] == ["212", "212"]
    assert rec.n_leads == 2
    assert rec.lead_names == ("MLII", "V1")
    assert rec.fs == 360.0
    assert rec.n_samples == 650000
    raw = wfdb.rdrecord(str(shared_data / "samples" / "mitdb-212" / "208"), sampto=1000)
    np.testing.assert_allclose(rec.signal[:, :1000], raw.p_signal.T, atol=1e-5)
    assert float(np.abs(rec.signal).max()) < 10.0


@pytest.mark.data
def test_ptbxl_12_lead(shared_data: Path) -> None:
    rec = read_wfdb(shared_data / "ptbxl" / "records100" / "00000" / "00001_lr")
    assert rec.signal.shape == (12, 1000)
    assert rec.fs == 100.0
    assert rec.lead_names[:3] == ("I", "II", "III")
    assert rec.lead_names[-1] == "V6"
    assert np.isfinite(rec.signal).all()


@pytest.mark.data
def test_flac_header_longer_than_data(shared_data: Path, tmp_path: Path) -> None:
    """Compressed formats have no fixed size; the decoded length is checked instead."""
    src = shared_data / "cinc2017"
    (tmp_path / "A00001.dat").write_bytes((src / "A00001.dat").read_bytes())
    (tmp_path / "A00001.hea").write_text((src / "A00001.hea").read_text())
    _edit_header_first_line(tmp_path / "A00001.hea", 3, "9500")
    with pytest.raises(InvalidStudyError, match="A00001"):
        read_wfdb(tmp_path / "A00001")


# --- DICOM ----------------------------------------------------------------------------------

TWELVE = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _ecg_dicom_path() -> str:
    return str(get_testdata_file("waveform_ecg.dcm"))


def test_read_dicom_ecg_from_path() -> None:
    path = _ecg_dicom_path()
    rec = read_dicom_ecg(path)
    assert rec.n_leads == 12
    assert rec.lead_names == TWELVE
    assert rec.fs == 1000.0
    assert rec.signal.dtype == np.float32
    assert rec.source["sop_class"] == "12-lead ECG"
    peak = float(np.abs(rec.signal).max())
    assert 0.1 < peak < 10.0  # mV, not µV
    ds = pydicom.dcmread(path)
    expected_mv = ds.waveform_array(0).T / 1000.0  # the file's channels are in µV
    np.testing.assert_allclose(rec.signal, expected_mv, rtol=1e-5, atol=1e-6)


def test_read_dicom_ecg_via_read_ecg_files() -> None:
    data = Path(_ecg_dicom_path()).read_bytes()
    rec = read_ecg_files({"x.dcm": data})
    ref = read_dicom_ecg(data)
    assert rec.lead_names == TWELVE
    assert rec.fs == 1000.0
    np.testing.assert_array_equal(rec.signal, ref.signal)


def test_read_ecg_files_dicom_without_extension_is_recognised() -> None:
    data = Path(_ecg_dicom_path()).read_bytes()
    rec = read_ecg_files({"upload": data})
    assert rec.n_leads == 12


def test_read_ecg_files_rejects_two_dicoms() -> None:
    data = Path(_ecg_dicom_path()).read_bytes()
    with pytest.raises(InvalidStudyError, match="one DICOM file per study"):
        read_ecg_files({"a.dcm": data, "b.dcm": data})


def test_dicom_ct_is_unsupported() -> None:
    ct = str(get_testdata_file("CT_small.dcm"))
    with pytest.raises(UnsupportedStudyError, match=r"modality CT\) is not an ECG waveform"):
        read_dicom_ecg(ct)
    with pytest.raises(UnsupportedStudyError):
        read_ecg_files({"ct.dcm": Path(ct).read_bytes()})


def test_dicom_ecg_without_waveform_sequence() -> None:
    ds = pydicom.dcmread(_ecg_dicom_path())
    del ds.WaveformSequence
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    with pytest.raises(InvalidStudyError, match="no WaveformSequence") as info:
        read_dicom_ecg(buf.getvalue())
    assert not isinstance(info.value, UnsupportedStudyError)
    assert "waveform" in str(info.value).lower()


def test_not_dicom_bytes_with_dcm_name() -> None:
    junk = np.random.default_rng(0).bytes(2000)
    with pytest.raises(InvalidStudyError, match="not a readable DICOM file"):
        read_ecg_files({"x.dcm": junk})
