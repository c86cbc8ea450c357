"""The image tasks ``chest-xray`` and ``breast-us``: their definitions (classes, flagged classes,
input spec, network), and their readers' refusal of a DICOM of a modality or body part the task
does not screen — also when the sender names the task."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from prescreen.errors import InvalidStudyError, UnsupportedStudyError
from prescreen.models.task import get_task
from tests.fixtures_images import blob_image, png_bytes

SHIPPED = Path(__file__).resolve().parents[2] / "prescreen" / "shipped"
SOP = {
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "US": UltrasoundImageStorage,
    "CT": CTImageStorage,
    "MR": MRImageStorage,
}


def dicom_image(modality: str, body_part: str | None = None, size: int = 32) -> bytes:
    """A small single-frame 8-bit DICOM image of ``modality`` (and body part, if given)."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = SOP[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = blob_image(size, 1, np.random.default_rng(0)).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- definitions


def test_chest_xray_definition() -> None:
    task = get_task("chest-xray")
    assert task.classes == ("normal", "pneumonia")
    assert task.normal_classes == ("normal",)
    assert task.input_spec["kind"] == "image"
    assert task.input_spec["size"] == [64, 64]
    assert task.input_spec["channels"] == 1
    assert task.input_spec["tensor"] == "float32 (batch, 1, 64, 64)"
    assert task.default_data == "pneumoniamnist"


def test_breast_us_flags_only_malignant() -> None:
    task = get_task("breast-us")
    assert task.classes == ("normal", "benign", "malignant")
    assert set(task.classes) - set(task.normal_classes) == {"malignant"}
    assert task.input_spec["size"] == [192, 192]
    assert task.input_spec["tensor"] == "float32 (batch, 1, 192, 192)"
    assert any("benign" in c.lower() and "not flagged" in c for c in task.caveats)


@pytest.mark.parametrize("name", ["chest-xray", "breast-us"])
def test_shipped_card_describes_the_task(name: str) -> None:
    card = json.loads((SHIPPED / name / "card.json").read_text())
    task = get_task(name)
    assert card["task"] == name
    assert card["classes"] == list(task.classes)
    assert card["normal_classes"] == list(task.normal_classes)
    assert card["input_spec"] == json.loads(json.dumps(task.input_spec))


@pytest.mark.parametrize("name", ["chest-xray", "breast-us"])
def test_preprocess_and_windows_give_the_declared_tensor(name: str) -> None:
    task = get_task(name)
    size = task.input_spec["size"][0]
    study = task.read_files({"x.png": png_bytes(blob_image(50, 1, np.random.default_rng(1)))})
    x = task.preprocess(study)
    assert x.shape == (1, size, size)
    assert abs(float(x.mean())) < 1e-3 and float(x.std()) == pytest.approx(1.0, abs=1e-2)  # z-scored
    windows = task.windows(x)
    assert windows.shape == (1, 1, size, size)
    assert windows.dtype == np.float32


@pytest.mark.parametrize("name", ["chest-xray", "breast-us"])
def test_network_outputs_one_logit_per_class_with_the_documented_size(name: str) -> None:
    """README: 'A MONAI DenseNet (init 32, growth 16, blocks 4-8-12-8; 0.7 M parameters)'."""
    task = get_task(name)
    net = task.build_network().eval()
    n_params = sum(p.numel() for p in net.parameters())
    assert 0.6e6 <= n_params <= 0.8e6
    size = task.input_spec["size"][0]
    with torch.inference_mode():
        out = net(torch.zeros(2, 1, size, size))
    assert out.shape == (2, len(task.classes))


@pytest.mark.parametrize("name", ["chest-xray", "breast-us"])
def test_train_view_is_one_frame_of_the_stack_reproducible_by_seed(name: str) -> None:
    task = get_task(name)
    size = task.input_spec["size"][0]
    stack = np.random.default_rng(0).normal(size=(3, size, size)).astype(np.float32)
    a = task.train_view(stack, np.random.default_rng(3))
    b = task.train_view(stack, np.random.default_rng(3))
    assert a.shape == (1, size, size)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize(
    ("modality", "body_part"),
    [("CR", "CHEST"), ("DX", "CHEST"), ("CR", None), ("DX", "chest")],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # a lower-case body part, as some senders write it
def test_chest_xray_reads_chest_radiographs(modality: str, body_part: str | None) -> None:
    study = get_task("chest-xray").read_files({"x.dcm": dicom_image(modality, body_part)})
    assert study.modality == modality
    assert study.frames.shape == (1, 32, 32)


@pytest.mark.parametrize("modality", ["US", "CT", "MR"])
def test_chest_xray_refuses_other_modalities(modality: str) -> None:
    with pytest.raises(UnsupportedStudyError) as info:
        get_task("chest-xray").read_files({"x.dcm": dicom_image(modality, "CHEST")})
    message = str(info.value)
    assert message == f"chest-xray screens CR/DX images, not modality {modality}"


@pytest.mark.parametrize("body_part", ["HAND", "SKULL", "ABDOMEN"])
def test_chest_xray_refuses_other_body_parts(body_part: str) -> None:
    with pytest.raises(UnsupportedStudyError) as info:
        get_task("chest-xray").read_files({"x.dcm": dicom_image("CR", body_part)})
    assert str(info.value) == f"chest-xray screens CHEST images, not body part {body_part}"


@pytest.mark.parametrize("body_part", ["BREAST", None, "ABDOMEN"])
def test_breast_us_reads_ultrasound_of_any_body_part(body_part: str | None) -> None:
    study = get_task("breast-us").read_files({"x.dcm": dicom_image("US", body_part)})
    assert study.modality == "US"


@pytest.mark.parametrize("modality", ["CR", "DX", "CT"])
def test_breast_us_refuses_other_modalities(modality: str) -> None:
    with pytest.raises(UnsupportedStudyError, match=f"^breast-us screens US images, not modality {modality}$"):
        get_task("breast-us").read_files({"x.dcm": dicom_image(modality)})


@pytest.mark.parametrize("name", ["chest-xray", "breast-us"])
def test_png_has_no_modality_and_is_read_by_either_task(name: str) -> None:
    study = get_task(name).read_files({"x.png": png_bytes(blob_image(40, 0, np.random.default_rng(0)))})
    assert study.modality is None
    assert study.frames.shape == (1, 40, 40)


@pytest.mark.parametrize("name", ["chest-xray", "breast-us"])
def test_image_readers_refuse_bad_uploads(name: str) -> None:
    read = get_task(name).read_files
    with pytest.raises(InvalidStudyError):
        read({})
    with pytest.raises(InvalidStudyError, match="one image file"):
        read({"a.png": png_bytes(blob_image(40, 0, np.random.default_rng(0))), "b.png": b"x"})
    with pytest.raises(InvalidStudyError):
        read({"a.png": b"not an image"})


def test_an_unsupported_refusal_is_an_invalid_study() -> None:
    """The API answers every InvalidStudyError with a 4xx: a wrong modality is one of them."""
    assert issubclass(UnsupportedStudyError, InvalidStudyError)


# --------------------------------------------------------------------------- named task, wrong content


def test_wrong_modality_is_refused_even_when_the_task_is_named() -> None:
    """Routing takes the sender's task as given; the task's own reader still refuses the DICOM."""
    from prescreen.models.model_store import ModelStore
    from prescreen.models.routing import route_task
    from prescreen.pipeline.engine import ScreeningEngine

    us = {"us.dcm": dicom_image("US", "BREAST")}
    assert route_task(us, "chest-xray") == "chest-xray"
    engine = ScreeningEngine(ModelStore())  # the shipped models, active in this test's home
    assert {"chest-xray", "breast-us"} <= set(engine.models)
    with pytest.raises(UnsupportedStudyError, match="chest-xray screens CR/DX images, not modality US"):
        engine.screen(us, task="chest-xray")
    cr_hand = {"cr.dcm": dicom_image("CR", "HAND")}
    with pytest.raises(UnsupportedStudyError, match="not body part HAND"):
        engine.screen(cr_hand, task="chest-xray")
    with pytest.raises(UnsupportedStudyError, match="breast-us screens US images, not modality CR"):
        engine.screen({"cr.dcm": dicom_image("CR", "CHEST")}, task="breast-us")
    # the same files are screened by the task that covers them
    assert engine.screen(us, task="breast-us").task == "breast-us"
    assert engine.screen(us).task == "breast-us"
