"""The files of one study, by name, each DICOM parsed at most once.

Content routing reads a DICOM's header and the task's reader decodes its pixels or waveform; both
take the dataset from here, so a file is parsed once per screening. Headers already read at receipt
(stored with the instance) can be handed in, and then routing parses nothing.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping

import pydicom
from pydicom.errors import InvalidDicomError

from prescreen.domain import DicomHeader, FileKind
from prescreen.errors import InvalidStudyError

#: the sampling rates an ECG can have; a header outside them is refused by the reader
MIN_RATE_HZ, MAX_RATE_HZ = 25.0, 20_000.0
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
ECG_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG",
}


_CODE_STRING = re.compile(r"^[A-Z0-9 _]{0,16}$")
_UID = re.compile(r"^[0-9.]{0,64}$")


def code_string(ds: pydicom.Dataset, keyword: str) -> str | None:
    """A DICOM code string (Modality, Body Part Examined), upper case, or ``None`` when absent.

    Raises:
        InvalidStudyError: a value that is no code string (a corrupt length reads raw header bytes
            into it); the message names the attribute, never its bytes.
    """
    try:
        value = str(ds.get(keyword, "") or "").strip().upper()
    except Exception as exc:  # pydicom decodes lazily: a corrupt element raises on first access
        raise InvalidStudyError(f"the DICOM {keyword} attribute cannot be decoded ({type(exc).__name__})") from exc
    if not _CODE_STRING.fullmatch(value):
        raise InvalidStudyError(f"the DICOM {keyword} attribute is malformed: expected up to 16 letters, digits or _")
    return value or None


def is_dicom(data: bytes) -> bool:
    """True when the bytes carry the DICOM Part 10 preamble marker."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def looks_dicom(name: str, data: bytes) -> bool:
    """A DICOM by its content, or by its ``.dcm`` name (a file without preamble)."""
    return is_dicom(data) or name.lower().endswith(".dcm")


def looks_raster(name: str, data: bytes) -> bool:
    """A PNG or JPEG by its name or its magic bytes."""
    return name.lower().endswith(RASTER_SUFFIXES) or data.startswith(RASTER_MAGIC)


class StudyFiles(Mapping[str, bytes]):
    """File name → content, plus each DICOM's dataset parsed on first use and kept.

    Args:
        files: the files as uploaded or stored.
        headers: DICOM headers already read (at receipt), by file name.
    """

    def __init__(self, files: Mapping[str, bytes], headers: Mapping[str, DicomHeader] | None = None) -> None:
        self._files = dict(files)
        self._headers = dict(headers or {})
        self._datasets: dict[str, pydicom.Dataset] = {}

    def __getitem__(self, name: str) -> bytes:
        return self._files[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def subset(self, names: list[str]) -> StudyFiles:
        """The files named, sharing the datasets and headers already read."""
        part = StudyFiles({n: self._files[n] for n in names}, {n: h for n, h in self._headers.items() if n in names})
        part._datasets = {n: d for n, d in self._datasets.items() if n in names}
        return part

    def instance_uid(self, name: str) -> str:
        """The SOP Instance UID of a DICOM file, else the file's name."""
        if looks_dicom(name, self._files[name]):
            try:
                uid = str(self.dataset(name).get("SOPInstanceUID", "") or "")
            except Exception:  # an unreadable file is reported by its reader; here it is only named
                uid = ""
            if _UID.fullmatch(uid) and uid:
                return uid
        return name

    def dataset(self, name: str) -> pydicom.Dataset:
        """The whole DICOM dataset of file ``name`` (pixel data read, not decoded).

        Raises:
            InvalidStudyError: the file is not a readable DICOM file.
        """
        if name not in self._datasets:
            try:
                self._datasets[name] = pydicom.dcmread(io.BytesIO(self._files[name]))
            except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
                raise InvalidStudyError(f"not a readable DICOM file ({type(exc).__name__})") from exc
        return self._datasets[name]

    def header(self, name: str) -> DicomHeader:
        """What routing reads of file ``name``'s DICOM header (raises ``InvalidStudyError``)."""
        if name not in self._headers:
            try:
                ds = self.dataset(name)
            except InvalidStudyError as exc:
                raise InvalidStudyError(f"file {name!r} is not a readable DICOM file") from exc
            try:
                sop_class = str(ds.get("SOPClassUID", "") or "")
            except Exception as exc:
                raise InvalidStudyError(f"the DICOM SOPClassUID cannot be decoded ({type(exc).__name__})") from exc
            if not _UID.fullmatch(sop_class):
                raise InvalidStudyError("the DICOM SOPClassUID is malformed: expected a UID of digits and dots")
            self._headers[name] = DicomHeader(
                sop_class_uid=sop_class or None,
                modality=code_string(ds, "Modality"),
                body_part=code_string(ds, "BodyPartExamined"),
            )
        return self._headers[name]

    def duration_s(self, name: str) -> float | None:
        """How long the ECG record of file ``name`` (a WFDB header or a DICOM waveform) lasts, from
        its header alone; ``None`` when the header does not say (the reader judges the file)."""
        data = self._files[name]
        if name.lower().endswith(".hea"):
            return wfdb_header_duration(data)
        if looks_dicom(name, data):
            try:
                waveform = self.dataset(name).get("WaveformSequence")
                first = waveform[0] if waveform else None
                samples = float(first.NumberOfWaveformSamples) if first is not None else 0.0
                rate = float(first.SamplingFrequency) if first is not None else 0.0
            except Exception:  # a malformed waveform header: the reader says what is wrong
                return None
            return samples / rate if samples > 0 and rate > 0 else None
        return None

    def kind(self, name: str) -> FileKind | None:
        """What kind of file ``name`` is, or ``None`` for a WFDB signal file or an unknown one."""
        data = self._files[name]
        if name.lower().endswith(".hea"):
            return FileKind.WFDB
        if looks_dicom(name, data):
            sop = self.header(name).sop_class_uid
            return FileKind.DICOM_WAVEFORM if sop in ECG_SOP_CLASSES else FileKind.DICOM_IMAGE
        if looks_raster(name, data):
            return FileKind.RASTER
        return None


def wfdb_header_duration(header: bytes) -> float | None:
    """Seconds of a WFDB record from its header's record line (``name nsig fs[/counter] nsamples``);
    ``None`` when the line lacks the rate or the length, or gives a rate no ECG has."""
    for raw in header.decode("ascii", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 4:
            return None
        try:
            rate = float(fields[2].split("/", 1)[0].split("(", 1)[0])
            samples = float(fields[3])
        except ValueError:
            return None
        plausible = MIN_RATE_HZ <= rate <= MAX_RATE_HZ and samples > 0
        return samples / rate if plausible else None  # an implausible header: the reader says why
    return None


def study_files(files: Mapping[str, bytes]) -> StudyFiles:
    """``files`` as :class:`StudyFiles` (the same object when it already is one)."""
    return files if isinstance(files, StudyFiles) else StudyFiles(files)
