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
from prescreen.domain import DicomHeader, FileKind
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
