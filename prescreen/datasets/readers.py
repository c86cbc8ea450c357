"""Readers that turn ECG files into :class:`EcgRecord`.

Formats: WFDB in every format the ``wfdb`` package reads (FLAC 516, 212, 16, MATLAB ``.mat``
v4 as used by CinC 2017) and DICOM waveforms of the ECG SOP classes.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import wfdb
from pydicom.errors import InvalidDicomError

from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.files import ECG_SOP_CLASSES, MAX_RATE_HZ, MIN_RATE_HZ, looks_dicom, study_files
from prescreen.errors import InvalidStudyError, PrescreenError, UnsupportedStudyError

_UNIT_TO_MV = {"uv": 1e-3, "mv": 1.0, "v": 1e3}
_SAFE_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9._-]{1,128}$")


def _check_rate(fs: float) -> None:
    if not MIN_RATE_HZ <= fs <= MAX_RATE_HZ:
        raise InvalidStudyError(
            f"sampling rate {fs:g} Hz is outside the {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz an ECG can have"
        )


_NUMBER = re.compile(r"^[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?$")


def _check_record_line(header: Path) -> None:
    """Validate the record line's numbers before wfdb reads it: wfdb falls back to its defaults
    (250 Hz) on a value it cannot parse, such as a negative sampling rate.

    Record line: ``name[/segments] n_signals [fs[/counter_freq[(base)]] [n_samples ...]]``.

    Raises:
        InvalidStudyError: a field that is not a non-negative number (the message names the field).
    """
    try:
        lines = header.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise InvalidStudyError(f"WFDB header {header.name} cannot be read") from exc
    record = next((line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")), [])
    fields = {"number of signals": 1, "sampling rate": 2, "number of samples": 3}
    for field, index in fields.items():
        if index >= len(record):
            continue
        value = record[index].split("/", 1)[0] if field == "sampling rate" else record[index]
        if not _NUMBER.match(value):
            raise InvalidStudyError(f"WFDB header {header.name}: the {field} must be a non-negative number")


def read_wfdb_header(path: Path) -> Any:
    """The parsed header of the single-segment WFDB record at ``path`` (without extension), with a
    plausible sampling rate and at least one signal.

    Raises:
        InvalidStudyError: the header is missing, unparseable, multi-segment, or declares no rate or signal.
    """
    header = path.with_name(path.name + ".hea")
    if not header.is_file():
        raise InvalidStudyError(f"WFDB header {header.name} not found")
    try:
        head = wfdb.rdheader(str(path))
    except Exception as exc:  # wfdb raises bare ValueError/IndexError on bad headers
        raise InvalidStudyError(f"WFDB header {header.name} cannot be parsed ({type(exc).__name__})") from exc
    _check_record_line(header)
    if isinstance(head, wfdb.MultiRecord) or not hasattr(head, "file_name"):
        raise InvalidStudyError(f"WFDB header {header.name} is a multi-segment record; send a single-segment record")
    if not head.fs or float(head.fs) <= 0:
        raise InvalidStudyError(f"WFDB header {header.name}: sampling rate must be > 0, got {head.fs}")
    _check_rate(float(head.fs))
    if not head.n_sig:
        raise InvalidStudyError(f"WFDB header {header.name} declares no signals")
    return head


def read_wfdb(record_path: str | Path, start_s: float = 0.0, seconds: float | None = None) -> EcgRecord:
    """Read a WFDB record given its path without extension, whole or a window of it.

    Args:
        record_path: path to the record, e.g. ``data/cinc2017/A00001``.
        start_s: where the window starts (seconds from the record's start).
        seconds: how long the window is (``None``: to the end); only the window is decoded, so a
            strip of a 24-hour record costs what the strip does.

    Raises:
        InvalidStudyError: the header or its signal files are missing, truncated, disagree
            with each other, or hold no usable samples.
    """
    path = Path(record_path)
    header = path.with_name(path.name + ".hea")
    head = read_wfdb_header(path)
    for fname in sorted(set(head.file_name or [])):
        if not (path.parent / fname).is_file():
            raise InvalidStudyError(f"WFDB header {header.name} refers to {fname}, which is missing")
    _check_signal_file_sizes(path.parent, head)
    sampfrom, sampto = _window(head, start_s, seconds)
    try:
        rec = wfdb.rdrecord(str(path), physical=True, sampfrom=sampfrom, sampto=sampto)
    except Exception as exc:
        raise InvalidStudyError(f"WFDB record {path.name} cannot be decoded ({type(exc).__name__})") from exc
    sig = rec.p_signal
    if sig is None:
        raise InvalidStudyError(f"WFDB record {path.name} holds no signal")
    if sampto is not None:
        if sig.shape[0] != sampto - sampfrom:
            raise InvalidStudyError(
                f"WFDB record {path.name}: the window holds {sig.shape[0]} samples, not {sampto - sampfrom}"
            )
    elif head.sig_len and sig.shape[0] != head.sig_len:
        raise InvalidStudyError(
            f"WFDB record {path.name}: header declares {head.sig_len} samples, data holds {sig.shape[0]}"
        )
    signal = np.ascontiguousarray(sig.T, dtype=np.float32)
    _check_finite(signal, path.name)
    units = [str(u or "mV").lower() for u in (rec.units or [])]
    unknown = sorted({u for u in units if u not in _UNIT_TO_MV})
    if unknown:
        raise InvalidStudyError(f"WFDB record {path.name}: unknown signal units {unknown}; expected uV, mV or V")
    scale = np.array([_UNIT_TO_MV[u] for u in units] or [1.0], dtype=np.float32)
    signal = signal * scale[:, None]
    names = tuple(str(n) for n in (rec.sig_name or [f"ch{i}" for i in range(signal.shape[0])]))
    return EcgRecord(
        signal=signal,
        fs=float(rec.fs),
        lead_names=names,
        source={"format": "wfdb", "record": path.name, "fmt": list(head.fmt or [])},
    )


def _window(head: Any, start_s: float, seconds: float | None) -> tuple[int, int | None]:
    """Sample bounds of a window of the record (``sampto`` ``None``: the whole record)."""
    if start_s == 0.0 and seconds is None:
        return 0, None
    if not head.sig_len:
        raise InvalidStudyError("a window of a WFDB record needs the record length in its header")
    fs = float(head.fs)
    start = min(max(0, round(start_s * fs)), int(head.sig_len) - 1)
    stop = int(head.sig_len) if seconds is None else min(int(head.sig_len), start + max(1, round(seconds * fs)))
    return start, stop


def _check_signal_file_sizes(folder: Path, head: Any) -> None:
    """Catch truncated or oversized signal files of fixed-width formats before decoding.

    Compressed formats (FLAC 508/516/524) and MATLAB files have no fixed size; the decoded
    length is checked after reading instead.
    """
    bytes_per_sample = {"16": 2.0, "212": 1.5, "32": 4.0, "8": 1.0, "80": 1.0, "61": 2.0, "24": 3.0}
    if not head.sig_len:
        return
    per_file: dict[str, list[str]] = {}
    for fname, fmt in zip(head.file_name or [], head.fmt or [], strict=False):
        per_file.setdefault(fname, []).append(str(fmt))
    for fname, fmts in per_file.items():
        if not all(f in bytes_per_sample for f in fmts) or fname.endswith(".mat"):
            continue
        expected = int(np.ceil(sum(bytes_per_sample[f] for f in fmts) * head.sig_len))
        offsets = [int(b or 0) for b, f in zip(head.byte_offset or [], head.file_name, strict=False) if f == fname]
        expected += max(offsets or [0])
        size = (folder / fname).stat().st_size
        if size < expected:
            raise InvalidStudyError(f"signal file {fname} is truncated: {size} bytes, header implies {expected}")


def _check_finite(signal: np.ndarray[Any, Any], name: str) -> None:
    bad = int(np.size(signal) - np.count_nonzero(np.isfinite(signal)))
    if bad:
        raise InvalidStudyError(f"record {name} holds {bad} missing or non-numeric (NaN) samples")


def read_dicom_ecg(source: str | Path | bytes | pydicom.Dataset) -> EcgRecord:
    """Read an ECG from a DICOM waveform object (12-lead, general or ambulatory ECG).

    Args:
        source: a file path, the file's bytes or its parsed dataset.

    Raises:
        UnsupportedStudyError: the DICOM is not an ECG waveform SOP class.
        InvalidStudyError: the file is not DICOM, or has no usable waveform data.
    """
    try:
        fileobj: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        ds = source if isinstance(source, pydicom.Dataset) else pydicom.dcmread(fileobj)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise InvalidStudyError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    try:
        return _ecg_from_dataset(ds)
    except PrescreenError:
        raise
    except Exception as exc:  # malformed channel attributes; the text may quote values: name the type only
        raise InvalidStudyError(f"DICOM waveform attributes cannot be interpreted ({type(exc).__name__})") from exc


def _ecg_from_dataset(ds: Any) -> EcgRecord:
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in ECG_SOP_CLASSES:
        modality = ds.get("Modality", "unknown")
        raise UnsupportedStudyError(
            f"DICOM SOP class {sop or 'missing'} (modality {modality}) is not an ECG waveform; "
            f"expected one of {', '.join(ECG_SOP_CLASSES.values())}"
        )
    seq = ds.get("WaveformSequence")
    if not seq:
        raise InvalidStudyError("DICOM ECG has no WaveformSequence (no waveform data)")
    group = seq[0]
    try:
        fs = float(group.SamplingFrequency)
        raw = np.asarray(ds.waveform_array(0), dtype=np.float64)  # samples × channels, scaled
    except Exception as exc:
        raise InvalidStudyError(f"DICOM waveform data cannot be decoded ({type(exc).__name__})") from exc
    _check_rate(fs)
    channels = group.get("ChannelDefinitionSequence") or []
    names: list[str] = []
    scale: list[float] = []
    for i, ch in enumerate(channels):
        names.append(_lead_name(ch, i))
        units_seq = ch.get("ChannelSensitivityUnitsSequence")
        unit = str(units_seq[0].CodeValue).lower() if units_seq else "uv"
        if unit not in _UNIT_TO_MV:
            raise InvalidStudyError(f"DICOM waveform channel {i}: unknown units {unit!r}; expected uV, mV or V")
        scale.append(_UNIT_TO_MV[unit])
    if raw.ndim != 2 or raw.shape[1] != len(names):
        raise InvalidStudyError(f"DICOM waveform has {raw.shape} samples but {len(names)} channel definitions")
    signal = (raw * np.asarray(scale)[None, :]).T.astype(np.float32)
    _check_finite(signal, "DICOM waveform")
    return EcgRecord(
        signal=np.ascontiguousarray(signal),
        fs=fs,
        lead_names=tuple(names),
        source={"format": "dicom", "sop_class": ECG_SOP_CLASSES[sop]},
    )


def _lead_name(channel: Any, index: int) -> str:
    """Short lead name (``I``, ``II``, ``aVR``, ``V1``...) from a channel's source code."""
    src = channel.get("ChannelSourceSequence")
    meaning = str(src[0].CodeMeaning) if src else f"ch{index}"
    match = re.match(r"^\s*Lead\s+([A-Za-z0-9]+)", meaning)
    return match.group(1) if match else meaning


def read_ecg_files(files: Mapping[str, bytes], start_s: float = 0.0, seconds: float | None = None) -> EcgRecord:
    """Read one ECG study sent as files: a WFDB header with its signal files, or one DICOM; whole,
    or the window from ``start_s`` lasting ``seconds`` (a WFDB record decodes only the window).

    Args:
        files: file name → content, as uploaded.
        start_s: where the window starts (seconds).
        seconds: the window's length (``None``: to the end).

    Raises:
        InvalidStudyError: no file, empty files, unsafe names, or a record that cannot be read.
    """
    if not files:
        raise InvalidStudyError("no file was sent; send a WFDB .hea with its data file, or a DICOM ECG")
    for name, data in files.items():
        if not data:
            raise InvalidStudyError(f"file {name!r} is empty")
    files = study_files(files)
    dicoms = [n for n, d in files.items() if looks_dicom(n, d)]
    headers = [n for n in files if n.lower().endswith(".hea")]
    if dicoms and not headers:
        if len(files) != 1:
            raise InvalidStudyError(f"send one DICOM file per study, got {len(files)} files")
        return window_of(read_dicom_ecg(files.dataset(dicoms[0])), start_s, seconds)
    if len(headers) != 1:
        raise InvalidStudyError(
            f"expected exactly one WFDB header (.hea) or one DICOM file, got {len(headers)} headers"
        )
    for name in files:
        if not _SAFE_NAME.match(name):
            raise InvalidStudyError(f"file name {name!r} is not a plain WFDB file name")
    with tempfile.TemporaryDirectory(prefix="prescreen-ecg-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return read_wfdb(Path(tmp) / headers[0][: -len(".hea")], start_s, seconds)


def window_of(record: EcgRecord, start_s: float, seconds: float | None) -> EcgRecord:
    """The window of an in-memory record from ``start_s`` lasting ``seconds`` (to the end: ``None``)."""
    if start_s == 0.0 and seconds is None:
        return record
    start = min(max(0, round(start_s * record.fs)), record.n_samples - 1)
    stop = record.n_samples if seconds is None else min(record.n_samples, start + max(1, round(seconds * record.fs)))
    source = {**record.source, "window_start_s": start / record.fs}
    return EcgRecord(np.ascontiguousarray(record.signal[:, start:stop]), record.fs, record.lead_names, source)
