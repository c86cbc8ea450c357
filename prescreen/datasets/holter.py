"""Ambulatory (Holter) ECG records for the ``holter`` task.

- the AAMI EC57 beat classes and the mapping of MIT-BIH beat symbols onto them;
- the MIT-BIH record lists of the inter-patient split (DS1) and the paced records;
- the reference annotations of a record (``.atr``): beats, rhythm intervals, ventricular flutter;
- :class:`HolterRecord`, a long record read chunk by chunk, so that a 24-hour record is never held
  whole in memory as floats.
"""

from __future__ import annotations

import os
import re
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import wfdb

from prescreen.config import get_settings
from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.files import looks_dicom, study_files
from prescreen.datasets.readers import (
    _UNIT_TO_MV,
    _check_signal_file_sizes,
    read_dicom_ecg,
    read_wfdb_header,
)
from prescreen.errors import DatasetError, InvalidStudyError, StudyTooLargeError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class BeatClass(StrEnum):
    """The AAMI EC57 beat classes: normal, supraventricular ectopic, ventricular ectopic, fusion,
    unknown (paced and unclassifiable)."""

    N = "N"
    S = "S"
    V = "V"
    F = "F"
    Q = "Q"


BEAT_CLASSES: tuple[BeatClass, ...] = tuple(BeatClass)
"""The classes in network-output order (index 0 = N)."""

AAMI_SYMBOLS: dict[str, BeatClass] = {
    **dict.fromkeys("NLRej", BeatClass.N),
    **dict.fromkeys("AaJS", BeatClass.S),
    **dict.fromkeys("VE", BeatClass.V),
    "F": BeatClass.F,
    **dict.fromkeys("/fQ", BeatClass.Q),
}
"""MIT-BIH beat symbol → AAMI class. Other symbols (``+ ~ | x ! [ ] "``) are not beats."""

PACED_SYMBOLS = frozenset("/f")
DS1_RECORDS: tuple[str, ...] = (
    "101",
    "106",
    "108",
    "109",
    "112",
    "114",
    "115",
    "116",
    "118",
    "119",
    "122",
    "124",
    "201",
    "203",
    "205",
    "207",
    "208",
    "209",
    "215",
    "220",
    "223",
    "230",
)
"""The training half of the inter-patient split (de Chazal et al. 2004)."""
DS2_RECORDS: tuple[str, ...] = (
    "100",
    "103",
    "105",
    "111",
    "113",
    "117",
    "121",
    "123",
    "200",
    "202",
    "210",
    "212",
    "213",
    "214",
    "219",
    "221",
    "222",
    "228",
    "231",
    "232",
    "233",
    "234",
)
"""The test half of the inter-patient split (not in the shared data folder)."""
PACED_RECORDS: tuple[str, ...] = ("102", "104", "107", "217")
"""Records with paced beats, excluded from AAMI training and evaluation."""

KNOWN_FORMATS = frozenset({"8", "16", "24", "32", "61", "80", "160", "212", "310", "311", "508", "516", "524"})
"""WFDB signal formats the chunked reader decodes."""
DEFAULT_CHUNK_S = 300.0
DEFAULT_OVERLAP_S = 10.0
_SAFE_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9._-]{1,128}$")
_PRIMARY_LEADS = ("MLII", "II", "ML2", "ECG II", "LEAD II", "ECG1", "ECG")


# --------------------------------------------------------------------------- reference annotations


@dataclass(frozen=True)
class RhythmInterval:
    """A stretch of one rhythm, from a rhythm-change note to the next (samples, stop exclusive).

    Attributes:
        rhythm: the note without its parenthesis (``AFIB``, ``N``, ``VT``, ``SVTA``, ``B``...).
        start: first sample.
        stop: sample after the last.
    """

    rhythm: str
    start: int
    stop: int


@dataclass(frozen=True)
class Reference:
    """A record's reference annotations (``.atr``), beats mapped onto the AAMI classes.

    Attributes:
        record: the record name.
        fs: sampling rate in Hz.
        n_samples: record length in samples.
        beat_samples: sample of each beat annotation (AAMI beats only), ascending.
        beat_classes: index into :data:`BEAT_CLASSES` per beat.
        rhythms: the rhythm intervals of the ``+`` notes.
        excluded: ventricular flutter/fibrillation episodes (``[`` to ``]``), which EC57 leaves out of
            beat-by-beat comparison, as (start, stop) samples.
        paced: whether the record holds paced beats (``/`` or ``f``).
        noise: each noise mark (``~``) as the (start, stop) samples of the beat interval around it.
    """

    record: str
    fs: float
    n_samples: int
    beat_samples: IntArray
    beat_classes: IntArray
    rhythms: tuple[RhythmInterval, ...] = ()
    excluded: tuple[tuple[int, int], ...] = ()
    paced: bool = False
    noise: tuple[tuple[int, int], ...] = ()

    def rhythm_spans(self, rhythm: str) -> list[tuple[float, float]]:
        """The (start_s, end_s) intervals of one rhythm (``AFIB``)."""
        return [(r.start / self.fs, r.stop / self.fs) for r in self.rhythms if r.rhythm == rhythm]


def read_reference(record_path: Path) -> Reference:
    """Read a record's ``.atr`` annotations as AAMI beats, rhythm intervals and flutter episodes.

    Args:
        record_path: the record without extension (``mitdb/101``).

    Raises:
        DatasetError: the record has no ``.hea`` or ``.atr`` file, or they cannot be read.
    """
    name = record_path.name
    if not record_path.with_suffix(".atr").is_file():
        raise DatasetError(f"record {name} has no reference annotations ({name}.atr); evaluation needs them")
    try:
        head = wfdb.rdheader(str(record_path))
        ann = wfdb.rdann(str(record_path), "atr")
    except Exception as exc:  # wfdb raises bare ValueError/IndexError/FileNotFoundError
        raise DatasetError(f"record {name}: header or annotations cannot be read ({type(exc).__name__})") from exc
    n_samples = int(head.sig_len or 0)
    symbols = list(ann.symbol)
    samples = np.asarray(ann.sample, dtype=np.int64)
    notes = [str(a or "").strip("\x00 ") for a in (ann.aux_note or [""] * len(symbols))]
    is_beat = np.array([s in AAMI_SYMBOLS for s in symbols], dtype=bool)
    classes = np.array([BEAT_CLASSES.index(AAMI_SYMBOLS[s]) for s in symbols if s in AAMI_SYMBOLS], dtype=np.int64)
    return Reference(
        record=name,
        fs=float(head.fs),
        n_samples=n_samples,
        beat_samples=samples[is_beat],
        beat_classes=classes,
        rhythms=_rhythm_intervals(symbols, samples, notes, n_samples),
        excluded=_flutter_episodes(symbols, samples, n_samples),
        paced=any(s in PACED_SYMBOLS for s in symbols),
        noise=_noise_marks(symbols, samples, samples[is_beat], n_samples),
    )


def _noise_marks(
    symbols: Sequence[str], samples: IntArray, beats: IntArray, n_samples: int
) -> tuple[tuple[int, int], ...]:
    """The beat interval around each noise mark (``~``), as (start, stop) samples just inside it."""
    out = []
    for s, t in zip(symbols, samples.tolist(), strict=True):
        if s != "~":
            continue
        i = int(np.searchsorted(beats, t))
        lo = int(beats[i - 1]) + 1 if i > 0 else 0
        hi = int(beats[i]) if i < len(beats) else n_samples
        out.append((lo, max(lo + 1, hi)))
    return tuple(out)


def _rhythm_intervals(
    symbols: Sequence[str], samples: IntArray, notes: Sequence[str], n_samples: int
) -> tuple[RhythmInterval, ...]:
    changes = [(int(t), n.lstrip("(")) for s, t, n in zip(symbols, samples, notes, strict=True) if s == "+" and n]
    stops = [t for t, _ in changes[1:]] + [max(n_samples, changes[-1][0] + 1 if changes else 0)]
    return tuple(RhythmInterval(r, t, stop) for (t, r), stop in zip(changes, stops, strict=True) if stop > t)


def _flutter_episodes(symbols: Sequence[str], samples: IntArray, n_samples: int) -> tuple[tuple[int, int], ...]:
    episodes: list[tuple[int, int]] = []
    start: int | None = None
    for s, t in zip(symbols, samples, strict=True):
        if s == "[":
            start = int(t)
        elif s == "]" and start is not None:
            episodes.append((start, int(t) + 1))
            start = None
    if start is not None:
        episodes.append((start, n_samples))
    return tuple(episodes)


def record_names(folder: Path) -> list[str]:
    """The names of the WFDB records (``.hea`` files) in a folder, sorted."""
    return sorted(p.stem for p in folder.glob("*.hea"))


def aami_records(folder: Path, names: Sequence[str] | None = None) -> list[Path]:
    """The records of ``folder`` that AAMI training and evaluation use: paced ones left out.

    Args:
        folder: a folder of WFDB records.
        names: restrict to these record names (default: every record in the folder).

    Raises:
        DatasetError: the folder is missing, holds no records, or a named record is absent.
    """
    if not folder.is_dir():
        raise DatasetError(f"data folder {folder} not found; expected WFDB records (.hea, .dat, .atr)")
    present = record_names(folder)
    wanted = list(names) if names is not None else present
    missing = [n for n in wanted if n not in present]
    if missing:
        raise DatasetError(f"records {', '.join(missing)} not found in {folder}")
    chosen = [folder / n for n in wanted if n not in PACED_RECORDS]
    if not chosen:
        raise DatasetError(f"{folder} holds no unpaced WFDB record (.hea); expected MIT-BIH-style records")
    return chosen


def record_files(record_path: Path) -> list[Path]:
    """A record's files (header, signal files, ``.atr``), for digests."""
    files = [p for p in sorted(record_path.parent.glob(record_path.name + ".*")) if p.suffix != ".tmp"]
    return [p for p in files if p.is_file()]


# --------------------------------------------------------------------------- long records


@dataclass(frozen=True)
class Chunk:
    """A stretch of a record as read by :meth:`HolterRecord.chunks`.

    Attributes:
        start: the record sample of ``signal[:, 0]``.
        keep_start: first record sample this chunk owns (detections before it belong to the previous chunk).
        keep_stop: sample after the last it owns.
        signal: float32 ``(leads, samples)`` in mV, the owned part plus up to ``overlap_s`` each side.
    """

    start: int
    keep_start: int
    keep_stop: int
    signal: FloatArray

    @property
    def stop(self) -> int:
        return self.start + int(self.signal.shape[1])


Reader = Callable[[int, int, Sequence[int]], FloatArray]


@dataclass
class HolterRecord:
    """A long ECG record read chunk by chunk.

    Build it with :meth:`from_files` (uploaded WFDB or DICOM files), :meth:`from_path` (a WFDB record
    on disk) or :meth:`from_ecg` (an :class:`EcgRecord` in memory). A WFDB record is decoded a chunk at
    a time; only a DICOM waveform is held whole (float32).

    Attributes:
        fs: sampling rate in Hz.
        n_samples: samples per lead.
        lead_names: one name per lead.
        source: where the record came from (format, record name); never patient data.
    """

    fs: float
    n_samples: int
    lead_names: tuple[str, ...]
    reader: Reader = field(repr=False)
    source: dict[str, Any] = field(default_factory=dict)
    _cleanup: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        """The record's length in seconds."""
        return self.n_samples / self.fs

    @property
    def n_leads(self) -> int:
        return len(self.lead_names)

    @property
    def primary_lead(self) -> int:
        """The lead the analysis uses: MLII / II when present, else the first."""
        upper = [n.strip().upper() for n in self.lead_names]
        for name in _PRIMARY_LEADS:
            if name in upper:
                return upper.index(name)
        return 0

    def read(self, start: int, stop: int, leads: Sequence[int] | None = None) -> FloatArray:
        """Samples ``start:stop`` of ``leads`` (default all) as float32 ``(leads, samples)`` in mV.

        Raises:
            InvalidStudyError: a range outside the record, or samples that cannot be decoded.
        """
        if not 0 <= start < stop <= self.n_samples:
            raise InvalidStudyError(f"samples {start}:{stop} lie outside the record's 0:{self.n_samples}")
        chosen = list(range(self.n_leads)) if leads is None else list(leads)
        return self.reader(start, stop, chosen)

    def chunks(
        self, seconds: float = DEFAULT_CHUNK_S, overlap_s: float = DEFAULT_OVERLAP_S, leads: Sequence[int] | None = None
    ) -> Iterator[Chunk]:
        """The record in consecutive chunks of ``seconds``, each read with ``overlap_s`` more each side.

        Every sample is owned (``keep_start:keep_stop``) by exactly one chunk.

        Raises:
            InvalidStudyError: non-positive chunk length or negative overlap, or undecodable samples.
        """
        if seconds <= 0 or overlap_s < 0:
            raise InvalidStudyError(f"chunks need a positive length and an overlap >= 0, got {seconds}, {overlap_s}")
        step = max(1, round(seconds * self.fs))
        pad = round(overlap_s * self.fs)
        for keep_start in range(0, self.n_samples, step):
            keep_stop = min(self.n_samples, keep_start + step)
            start, stop = max(0, keep_start - pad), min(self.n_samples, keep_stop + pad)
            yield Chunk(start, keep_start, keep_stop, self.read(start, stop, leads))

    def close(self) -> None:
        """Delete the temporary files of an uploaded record (also done when it is garbage-collected)."""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None

    def __enter__(self) -> HolterRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_ecg(cls, record: EcgRecord) -> HolterRecord:
        """Wrap an in-memory record (a DICOM waveform) whole."""
        signal = np.ascontiguousarray(record.signal, dtype=np.float32)

        def reader(start: int, stop: int, leads: Sequence[int]) -> FloatArray:
            return np.ascontiguousarray(signal[list(leads), start:stop])

        return cls(record.fs, record.n_samples, record.lead_names, reader, dict(record.source))

    @classmethod
    def from_path(cls, record_path: Path, max_bytes: int | None = None) -> HolterRecord:
        """Open a WFDB record on disk (path without extension) for chunked reading.

        Args:
            record_path: e.g. ``mitdb/101``.
            max_bytes: refuse signal files larger than this in all (default ``max_holter_bytes``).

        Raises:
            InvalidStudyError: a missing or malformed header, missing, truncated or oversized signal
                files, an unknown signal format or units, or samples that cannot be decoded.
        """
        head = _checked_header(record_path)
        limit = get_settings().max_holter_bytes if max_bytes is None else max_bytes
        size = sum((record_path.parent / f).stat().st_size for f in set(head.file_name))
        _check_size(size, limit)
        scale = _unit_scale(head, record_path.name)
        reader = _wfdb_reader(record_path, scale)
        names = tuple(str(n) for n in (head.sig_name or [f"ch{i}" for i in range(head.n_sig)]))
        record = cls(
            float(head.fs),
            int(head.sig_len),
            names,
            reader,
            {"format": "wfdb", "record": record_path.name, "fmt": [str(f) for f in head.fmt]},
        )
        _probe(record)
        return record

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> HolterRecord:
        """Read an uploaded ambulatory ECG: one WFDB header with its signal files, or one DICOM waveform.

        The WFDB files go to a temporary folder that lives as long as the record (or until
        :meth:`close`).

        Raises:
            StudyTooLargeError: the files exceed ``PRESCREEN_MAX_HOLTER_BYTES``.
            InvalidStudyError: no file, empty or unsafe names, not one header or one DICOM, or a
                record that cannot be read.
        """
        _check_upload(files)
        files = study_files(files)
        dicoms = [n for n, d in files.items() if looks_dicom(n, d)]
        headers = [n for n in files if n.lower().endswith(".hea")]
        if dicoms and not headers:
            if len(files) != 1:
                raise InvalidStudyError(f"send one DICOM file per ambulatory ECG, got {len(files)} files")
            return cls.from_ecg(read_dicom_ecg(files.dataset(dicoms[0])))
        if len(headers) != 1:
            raise InvalidStudyError(
                f"expected exactly one WFDB header (.hea) or one DICOM file, got {len(headers)} headers"
            )
        unsafe = [n for n in files if not _SAFE_NAME.match(n)]
        if unsafe:
            raise InvalidStudyError(f"file name {unsafe[0]!r} is not a plain WFDB file name")
        tmp = tempfile.TemporaryDirectory(prefix="prescreen-holter-")
        try:
            for name, data in files.items():
                (Path(tmp.name) / name).write_bytes(data)
            record = cls.from_path(Path(tmp.name) / headers[0][: -len(".hea")])
        except BaseException:
            tmp.cleanup()
            raise
        record._cleanup = weakref.finalize(record, tmp.cleanup)
        return record


def _check_upload(files: Mapping[str, bytes]) -> None:
    if not files:
        raise InvalidStudyError("no file was sent; send a WFDB .hea with its signal file, or a DICOM ECG")
    for name, data in files.items():
        if not data:
            raise InvalidStudyError(f"file {name!r} is empty")
    _check_size(sum(len(d) for d in files.values()), get_settings().max_holter_bytes)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise StudyTooLargeError(
            f"the ambulatory record is {size / 1e6:.1f} MB; the holter task reads at most {limit / 1e6:.1f} MB "
            "(PRESCREEN_MAX_HOLTER_BYTES)"
        )


def _checked_header(path: Path) -> Any:
    """The parsed header of a single-segment record with known formats, rate, length and files."""
    header = path.with_name(path.name + ".hea")
    head = read_wfdb_header(path)
    if not head.sig_len:
        raise InvalidStudyError(f"WFDB header {header.name} must declare the number of samples of an ambulatory record")
    unknown = sorted({str(f) for f in head.fmt or []} - KNOWN_FORMATS)
    if unknown or not head.fmt:
        raise InvalidStudyError(
            f"WFDB header {header.name}: unknown signal format {', '.join(unknown) or 'missing'}; "
            f"expected one of {', '.join(sorted(KNOWN_FORMATS, key=int))}"
        )
    for fname in sorted(set(head.file_name or [])):
        if not (path.parent / fname).is_file():
            raise InvalidStudyError(f"WFDB header {header.name} refers to {fname}, which is missing")
    _check_signal_file_sizes(path.parent, head)
    return head


def _unit_scale(head: Any, name: str) -> FloatArray:
    units = [str(u or "mV").lower() for u in (head.units or ["mV"] * head.n_sig)]
    unknown = sorted({u for u in units if u not in _UNIT_TO_MV})
    if unknown:
        raise InvalidStudyError(f"WFDB record {name}: unknown signal units {unknown}; expected uV, mV or V")
    return np.array([_UNIT_TO_MV[u] for u in units], dtype=np.float32)


def _wfdb_reader(path: Path, scale: FloatArray) -> Reader:
    def reader(start: int, stop: int, leads: Sequence[int]) -> FloatArray:
        try:
            rec = wfdb.rdrecord(
                str(path), sampfrom=start, sampto=stop, channels=list(leads), physical=True, return_res=32
            )
        except Exception as exc:
            raise InvalidStudyError(
                f"WFDB record {path.name}: samples {start}-{stop} cannot be decoded ({type(exc).__name__})"
            ) from exc
        if rec.p_signal is None or rec.p_signal.shape[0] != stop - start:
            got = 0 if rec.p_signal is None else rec.p_signal.shape[0]
            raise InvalidStudyError(
                f"WFDB record {path.name}: expected {stop - start} samples from {start}, the data holds {got}"
            )
        out = np.ascontiguousarray(rec.p_signal.T, dtype=np.float32)
        out *= scale[list(leads), None]
        return out

    return reader


def _probe(record: HolterRecord) -> None:
    """Decode the first and last second, so that a truncated or corrupt file is refused on reading."""
    n = max(1, round(record.fs))
    record.read(0, min(n, record.n_samples))
    record.read(max(0, record.n_samples - n), record.n_samples)


def read_holter_files(files: Mapping[str, bytes]) -> HolterRecord:
    """The ``holter`` task's reader: uploaded files → :class:`HolterRecord` (see :meth:`HolterRecord.from_files`)."""
    return HolterRecord.from_files(files)


def tile_record(source: Path, target: Path, hours: float) -> Path:
    """Write a long record by repeating a WFDB record (format 16), for memory and speed checks.

    The target is written a source-record at a time, never whole in memory.

    Args:
        source: the record to repeat (path without extension).
        target: the new record (path without extension); its folder must exist.
        hours: the length of the new record.

    Returns:
        the target path.
    """
    head = _checked_header(source)
    whole = wfdb.rdrecord(str(source), physical=False, return_res=16)
    digital = np.ascontiguousarray(whole.d_signal.astype(np.int16))
    total = round(hours * 3600 * float(head.fs))
    with target.with_name(target.name + ".dat").open("wb") as fh:
        written = 0
        while written < total:
            part = digital[: total - written]
            fh.write(part.tobytes())
            written += len(part)
    lines = [f"{target.name} {head.n_sig} {float(head.fs):g} {total}"]
    for i in range(head.n_sig):
        gain, base, unit = head.adc_gain[i], head.baseline[i], head.units[i] or "mV"
        lines.append(f"{target.name}.dat 16 {gain:g}({base})/{unit} 16 0 0 0 0 {head.sig_name[i]}")
    target.with_name(target.name + ".hea").write_text("\n".join(lines) + os.linesep)
    return target
