"""Routing by content reads each task's declaration of what it accepts: a new task is one module
and one registry line, and a matching DICOM is routed to it with no other change."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from torch import nn

from prescreen.datasets.collections import LabelledSet
from prescreen.datasets.files import StudyFiles
from prescreen.domain import DicomHeader, FileKind, RecordLength
from prescreen.errors import InvalidStudyError, UnsupportedStudyError
from prescreen.models.routing import route_task
from prescreen.models.task import Accepts, Task, register, unregister
from tests.fixtures_dicom import make_instance


def encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_file() -> bytes:
    return Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()


def _unused(*_: object) -> LabelledSet:
    raise AssertionError("the toy task is never trained")


@pytest.fixture
def toy_ct_task() -> Iterator[str]:
    """A toy task for CT images, registered the way a task module registers itself."""

    @register("toy-ct")
    def toy_ct() -> Task:
        return Task(
            name="toy-ct",
            classes=("normal", "abnormal"),
            normal_classes=("normal",),
            input_spec={"kind": "image"},
            default_data="toy",
            accepts=Accepts((FileKind.DICOM_IMAGE,), modalities=("CT",)),
            read_files=lambda files: files,
            preprocess=lambda study: np.zeros((1, 4, 4), dtype=np.float32),
            windows=lambda x: x,
            train_view=lambda x, rng: x,
            build_network=lambda: nn.Identity(),
            load_dataset=_unused,
        )

    yield "toy-ct"
    unregister("toy-ct")


def test_a_registered_toy_task_receives_the_dicom_it_declares(toy_ct_task: str) -> None:
    assert route_task({"ct.dcm": ct_file()}) == toy_ct_task
    # the built-in tasks still get theirs
    assert route_task({"us.dcm": encode(make_instance("US"))}) == "breast-us"


def test_without_the_toy_task_a_ct_is_screened_by_no_model() -> None:
    with pytest.raises(UnsupportedStudyError, match="no model screens DICOM modality CT"):
        route_task({"ct.dcm": ct_file()})


@pytest.mark.parametrize(
    ("modality", "body_part", "task"),
    [("US", None, "breast-us"), ("CR", None, "chest-xray"), ("DX", "CHEST", "chest-xray"), ("ECG", None, "ecg-rhythm")],
)
def test_builtin_tasks_route_by_their_declarations(modality: str, body_part: str | None, task: str) -> None:
    ds = make_instance(modality)
    if body_part:
        ds.BodyPartExamined = body_part
    assert route_task({"x.dcm": encode(ds)}) == task


def test_a_body_part_the_task_does_not_declare_is_refused() -> None:
    ds = make_instance("CR")
    ds.BodyPartExamined = "HAND"
    with pytest.raises(UnsupportedStudyError, match="no model screens DICOM modality CR of body part HAND"):
        route_task({"x.dcm": encode(ds)})


def test_raster_needs_a_task_and_the_message_names_the_raster_tasks() -> None:
    with pytest.raises(InvalidStudyError, match="needs a 'task' field \\(breast-us or chest-xray\\)"):
        route_task({"x.png": b"\x89PNG\r\n\x1a\n"})


def test_headers_read_at_receipt_are_used_without_parsing_the_file() -> None:
    """In the queue the header was parsed when the instance arrived; routing does not parse it again
    (here the bytes are not even DICOM, so a parse would fail)."""
    sop_us = "1.2.840.10008.5.1.4.1.1.6.1"
    files = StudyFiles({"a.dcm": b"not parsed"}, headers={"a.dcm": DicomHeader(sop_us, "US", None)})
    assert route_task(files) == "breast-us"


def test_a_dicom_is_parsed_once_for_routing_and_reading() -> None:
    files = StudyFiles({"us.dcm": encode(make_instance("US"))})
    assert route_task(files) == "breast-us"
    parsed = files.dataset("us.dcm")
    assert files.dataset("us.dcm") is parsed  # the reader gets the same object back


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (b"100 2 360 650000\n100.dat 212 200 11 1024 995 -22131 0 MLII\n", 650000 / 360),
        (b"# a comment first\nA00001 1 300 9000 2018-01-01\n", 30.0),
        (b"rec 1 250/1000(0) 2500\n", 10.0),
        (b"rec 1 360\n", None),  # no length on the record line
        (b"rec 1 abc 100\n", None),
        (b"rec 1 0 100\n", None),
        (b"r 1 0.0001 10\n", None),  # no ECG has that rate: the reader refuses it
        (b"", None),
    ],
)
def test_a_wfdb_record_length_is_read_from_its_header_line(header: bytes, seconds: float | None) -> None:
    from prescreen.datasets.files import wfdb_header_duration

    assert wfdb_header_duration(header) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(
    ("length", "duration", "border", "takes"),
    [
        (RecordLength.LONG, 1800.0, 600.0, True),
        (RecordLength.LONG, 30.0, 600.0, False),
        (RecordLength.LONG, None, 600.0, False),  # unknown length counts as short
        (RecordLength.SHORT, 30.0, 600.0, True),
        (RecordLength.SHORT, None, 600.0, True),
        (RecordLength.SHORT, 1800.0, 600.0, False),
        (RecordLength.SHORT, 1800.0, 3600.0, True),  # the border is a setting
        (None, 1800.0, 600.0, True),
    ],
)
def test_a_task_declares_the_record_length_it_screens(
    length: RecordLength | None, duration: float | None, border: float, takes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prescreen.config import get_settings

    monkeypatch.setenv("PRESCREEN_HOLTER_MIN_SECONDS", str(border))
    get_settings.cache_clear()
    try:
        assert Accepts((FileKind.WFDB,), length=length).takes(FileKind.WFDB, None, duration) is takes
    finally:
        monkeypatch.delenv("PRESCREEN_HOLTER_MIN_SECONDS")
        get_settings.cache_clear()


def test_a_short_wfdb_strip_goes_to_rhythm_screening() -> None:
    assert route_task({"a.hea": b"A00001 1 300 9000\nA00001.mat 16 1000 16 0 -127 0 0 ECG\n", "a.mat": b"x"}) == (
        "ecg-rhythm"
    )
