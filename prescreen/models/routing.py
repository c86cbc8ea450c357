"""Routing by content: which task screens a study, read from each ``Task``'s declaration of what
it accepts. Adding a task needs no change here."""

from __future__ import annotations

from collections.abc import Mapping

from prescreen.datasets.files import StudyFiles, study_files
from prescreen.domain import FileKind
from prescreen.errors import InvalidStudyError, UnsupportedStudyError
from prescreen.models.task import Task, get_task, task_names


def _tasks() -> list[Task]:
    return [get_task(name) for name in task_names()]


def route_task(files: Mapping[str, bytes], requested: str | None = None) -> str:
    """Which task screens these files: the requested one, else the first task (by name) whose
    declaration accepts the content.

    A WFDB header decides for the record; else the first DICOM file by its header (SOP class,
    modality, body part); an ECG's length (from its header) tells a long ambulatory record from a
    short strip. PNG/JPEG carry no such context and need ``requested``.

    Raises:
        InvalidStudyError: no file, an unreadable DICOM, or a PNG/JPEG without a task.
        UnsupportedStudyError: no task covers the files' content.
    """
    if requested:
        return requested
    if not files:
        raise InvalidStudyError("no file was sent; send the study as multipart field 'file'")
    study = study_files(files)
    kinds = {name: study.kind(name) for name in study}
    tasks = _tasks()
    if FileKind.WFDB in kinds.values():
        return _first(tasks, FileKind.WFDB, study, None, "WFDB records")
    for name, kind in kinds.items():
        if kind in (FileKind.DICOM_WAVEFORM, FileKind.DICOM_IMAGE):
            return _route_dicom(tasks, kind, study, name)
    if FileKind.RASTER in kinds.values():
        raster = [t.name for t in tasks if FileKind.RASTER in t.accepts.file_kinds]
        raise InvalidStudyError(f"a PNG/JPEG study needs a 'task' field ({' or '.join(raster)})")
    raise UnsupportedStudyError(
        "no model screens this study: send a WFDB record, a DICOM (ECG, US, chest CR/DX), "
        "or a PNG/JPEG with a 'task' field"
    )


def _first(tasks: list[Task], kind: FileKind, study: StudyFiles, name: str | None, what: str) -> str:
    header = study.header(name) if name is not None else None
    duration = _duration(study, kind, name)
    for task in tasks:
        if task.accepts.takes(kind, header, duration):
            return task.name
    raise UnsupportedStudyError(f"no model screens {what}")


def _duration(study: StudyFiles, kind: FileKind, name: str | None) -> float | None:
    """The record's length from its header (a WFDB record's or a DICOM waveform's), else ``None``."""
    if kind == FileKind.WFDB:
        headers = [n for n in study if study.kind(n) == FileKind.WFDB]
        return study.duration_s(headers[0]) if headers else None
    if kind == FileKind.DICOM_WAVEFORM and name is not None:
        return study.duration_s(name)
    return None


def _route_dicom(tasks: list[Task], kind: FileKind, study: StudyFiles, name: str) -> str:
    header = study.header(name)
    if kind == FileKind.DICOM_WAVEFORM:
        return _first(tasks, kind, study, name, f"DICOM waveforms of SOP class {header.sop_class_uid}")
    part = f" of body part {header.body_part}" if header.body_part else ""
    return _first(tasks, kind, study, name, f"DICOM modality {header.modality or 'unknown'}{part}")
