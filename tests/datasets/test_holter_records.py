"""Holter records: AAMI mapping, reference annotations, and the chunked reader of long records."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb
from pydicom.data import get_testdata_file

from prescreen.config import get_settings
from prescreen.datasets.holter import (
    AAMI_SYMBOLS,
    BEAT_CLASSES,
    DS1_RECORDS,
    PACED_RECORDS,
    BeatClass,
    HolterRecord,
    aami_records,
    read_holter_files,
    read_reference,
    tile_record,
)
from prescreen.errors import DatasetError, InvalidStudyError, StudyTooLargeError
from tests.conftest import data_dir
from tests.peers import DATA_HINT, require_peer

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def mitdb() -> Path:
    folder = data_dir() / "mitdb"
    require_peer(f"the MIT-BIH records under {folder}", (folder / "101.hea").is_file(), DATA_HINT)
    return folder


def files_of(folder: Path, record: str, with_atr: bool = False) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(folder.glob(record + ".*")) if with_atr or p.suffix in (".hea", ".dat")
    }


@pytest.mark.parametrize(
    ("symbols", "cls"),
    [("NLRej", BeatClass.N), ("AaJS", BeatClass.S), ("VE", BeatClass.V), ("F", BeatClass.F), ("/fQ", BeatClass.Q)],
)
def test_aami_mapping(symbols: str, cls: BeatClass) -> None:
    assert all(AAMI_SYMBOLS[s] == cls for s in symbols)


def test_non_beat_annotations_are_not_beats() -> None:
    assert not set('+~|x![]"') & set(AAMI_SYMBOLS)
    assert [c.value for c in BEAT_CLASSES] == ["N", "S", "V", "F", "Q"]


def test_record_lists() -> None:
    assert len(DS1_RECORDS) == 22 and not set(DS1_RECORDS) & set(PACED_RECORDS)


def test_reference_beats_rhythms_and_flutter(mitdb: Path) -> None:
    ref = read_reference(mitdb / "201")
    assert ref.fs == 360.0 and ref.n_samples == 650000
    counts = np.bincount(ref.beat_classes, minlength=5)
    assert counts.sum() == len(ref.beat_samples) == 1963
    assert counts[1] > 0 and counts[2] > 0  # 201 has S and V beats
    assert np.all(np.diff(ref.beat_samples) > 0)
    af = ref.rhythm_spans("AFIB")
    assert af and all(b > a for a, b in af)
    assert not ref.paced
    flutter = read_reference(mitdb / "207").excluded
    assert len(flutter) >= 1 and all(b > a for a, b in flutter)


def test_paced_record_is_recognised(mitdb: Path) -> None:
    assert read_reference(mitdb / "102").paced
    assert "102" not in [p.name for p in aami_records(mitdb)]


def test_missing_annotations_name_the_record(mitdb: Path, tmp_path: Path) -> None:
    for name, data in files_of(mitdb, "101").items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DatasetError, match=r"record 101 has no reference annotations \(101.atr\)"):
        read_reference(tmp_path / "101")


def test_chunks_partition_the_record_and_match_a_direct_read(mitdb: Path) -> None:
    record = HolterRecord.from_path(mitdb / "101")
    assert record.fs == 360.0 and record.n_samples == 650000
    assert record.lead_names == ("MLII", "V1") and record.primary_lead == 0
    assert record.duration_s == pytest.approx(650000 / 360)
    chunks = list(record.chunks(seconds=300, overlap_s=10, leads=[0]))
    assert chunks[0].keep_start == 0 and chunks[-1].keep_stop == record.n_samples
    assert all(a.keep_stop == b.keep_start for a, b in itertools.pairwise(chunks))
    direct = wfdb.rdrecord(str(mitdb / "101"), sampfrom=100000, sampto=110000, channels=[0]).p_signal[:, 0]
    chunk = next(c for c in chunks if c.start <= 100000 and c.stop >= 110000)
    assert chunk.signal.dtype == np.float32 and chunk.signal.shape[0] == 1
    got = chunk.signal[0, 100000 - chunk.start : 110000 - chunk.start]
    np.testing.assert_allclose(got, direct, atol=1e-6)
    inner = chunks[1]
    assert inner.keep_start - inner.start == 3600 and inner.stop - inner.keep_stop == 3600


def test_from_files_keeps_its_files_until_closed(mitdb: Path) -> None:
    record = read_holter_files(files_of(mitdb, "101"))
    assert record.duration_s == pytest.approx(1805.56, abs=0.01)
    assert record.source["record"] == "101"
    first = record.read(0, 360)
    assert first.shape == (2, 360)
    record.close()
    with pytest.raises(InvalidStudyError):
        record.read(0, 360)


def test_dicom_waveform_is_wrapped_whole() -> None:
    path = get_testdata_file("waveform_ecg.dcm")
    assert path is not None
    record = HolterRecord.from_files({"ecg.dcm": Path(path).read_bytes()})
    assert record.n_leads == 12 and record.fs > 0
    assert record.primary_lead == record.lead_names.index("II")
    chunks = list(record.chunks(seconds=3, overlap_s=1))
    assert sum(c.keep_stop - c.keep_start for c in chunks) == record.n_samples


def test_too_large_record_is_refused(mitdb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESCREEN_MAX_HOLTER_BYTES", "1000")
    get_settings.cache_clear()
    with pytest.raises(StudyTooLargeError, match="holter task reads at most"):
        read_holter_files(files_of(mitdb, "101"))
    with pytest.raises(StudyTooLargeError):
        HolterRecord.from_path(mitdb / "101")


def test_unknown_signal_format_is_refused(mitdb: Path, tmp_path: Path) -> None:
    files = files_of(mitdb, "101")
    files["101.hea"] = files["101.hea"].replace(b" 516 ", b" 999 ")
    with pytest.raises(InvalidStudyError, match="unknown signal format 999; expected one of"):
        read_holter_files(files)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: {k: v for k, v in f.items() if k != "101.dat"}, "refers to 101.dat, which is missing"),
        (lambda f: {**f, "101.dat": b""}, "is empty"),
        (lambda f: {**f, "other.hea": f["101.hea"]}, "exactly one WFDB header"),
        (lambda f: {}, "no file was sent"),
        (lambda f: {**f, "../x.hea": b"x"}, "exactly one WFDB header"),
    ],
)
def test_malformed_uploads_are_refused(mitdb: Path, change: object, message: str) -> None:
    with pytest.raises(InvalidStudyError, match=message):
        read_holter_files(change(files_of(mitdb, "101")))  # type: ignore[operator]


def test_truncated_flac_is_refused(mitdb: Path) -> None:
    files = files_of(mitdb, "101")
    files["101.dat"] = files["101.dat"][: len(files["101.dat"]) // 2]
    with pytest.raises(InvalidStudyError, match="101"):
        read_holter_files(files)


def test_tiled_record_reads_like_its_source(mitdb: Path, tmp_path: Path) -> None:
    shutil.copy(mitdb / "101.hea", tmp_path / "101.hea")
    shutil.copy(mitdb / "101.dat", tmp_path / "101.dat")
    target = tile_record(tmp_path / "101", tmp_path / "long", hours=0.6)
    record = HolterRecord.from_path(target)
    assert record.n_samples == round(0.6 * 3600 * 360)
    source = HolterRecord.from_path(mitdb / "101")
    np.testing.assert_allclose(record.read(650000, 650360), source.read(0, 360), atol=1e-6)


def test_noise_marks_cover_the_beat_interval_around_them(mitdb: Path) -> None:
    ref = read_reference(mitdb / "208")
    assert ref.noise
    for lo, hi in ref.noise:
        assert hi > lo
        inside = (ref.beat_samples >= lo) & (ref.beat_samples < hi)
        assert not inside.any()
