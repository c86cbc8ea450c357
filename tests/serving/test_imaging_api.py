"""Image studies through the REST API: content routing, explanations, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from prescreen.config import get_settings
from prescreen.errors import InvalidStudyError, UnsupportedStudyError
from prescreen.models.model_store import ModelStore, StoredModel
from prescreen.models.routing import route_task
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.serving.app import create_app
from tests.fixtures_images import blob_image, png_bytes


@pytest.fixture
def client(image_models: dict[str, StoredModel], tiny_model: StoredModel, tmp_path: Path) -> TestClient:
    return TestClient(create_app(ScreeningEngine(ModelStore(), explanations_dir=tmp_path / "explanations")))


def dicom_bytes(modality: str, body_part: str | None = None, frames: int = 1) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1" if modality in ("CR", "DX") else ds.SOPClassUID
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = ds.PixelData * frames
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_routing_by_content(shared_data: Path) -> None:
    us = (shared_data / "dicom" / "US1_UNCR.dcm").read_bytes()
    assert route_task({"us.dcm": us}) == "breast-us"
    assert route_task({"cr.dcm": (shared_data / "dicom" / "cr_chest_rsna_sample.dcm").read_bytes()}) == "chest-xray"
    assert route_task({"cr.dcm": dicom_bytes("CR")}) == "chest-xray"
    with pytest.raises(UnsupportedStudyError, match="EXTREMITY"):
        route_task({"rg.dcm": (shared_data / "dicom" / "RG3_J2KR.dcm").read_bytes()})
    with pytest.raises(UnsupportedStudyError, match="modality CT"):
        route_task({"ct.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes()})
    with pytest.raises(InvalidStudyError, match="task"):
        route_task({"x.png": png_bytes(blob_image(32, 0, np.random.default_rng(0)))})


@pytest.mark.data
def test_us_dicom_screened_as_breast_us(client: TestClient, shared_data: Path) -> None:
    for name in ("US1_UNCR.dcm", "US1_J2KR.dcm", "OBXXXX1A_rle_2frame.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"):
        r = client.post("/v1/screen", files=[("file", (name, (shared_data / "dicom" / name).read_bytes()))])
        assert r.status_code == 200, (name, r.text)
        body = r.json()
        assert body["task"] == "breast-us" and set(body["probabilities"]) == {"normal", "benign", "malignant"}
        assert body["flagged"] == (body["label"] == "malignant")


def test_png_with_task_and_explanation(client: TestClient, image_models: dict[str, StoredModel]) -> None:
    png = png_bytes(blob_image(64, 1, np.random.default_rng(1)))
    r = client.post("/v1/screen", files=[("file", ("chest.png", png))], data={"task": "chest-xray"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "chest-xray"
    assert body["model"]["version"] == image_models["chest-xray"].card.version
    if body["flagged"]:
        url = body["explanation_url"]
        img = client.get(url)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(img.content)).size[0] > 100
    else:
        assert "explanation_url" not in body


def test_explanation_for_flagged_image(image_models: dict[str, StoredModel], tmp_path: Path) -> None:
    """Force a flag (threshold 0) and check the overlay is written and served."""
    engine = ScreeningEngine(ModelStore(), explanations_dir=tmp_path / "ex")
    model = engine.models["chest-xray"]
    model.card.operating_threshold = -1.0
    result = engine.screen({"c.png": png_bytes(blob_image(64, 1, np.random.default_rng(2)))}, "chest-xray")
    assert result.flagged and result.explanation_url
    client = TestClient(create_app(engine))
    first = client.get(result.explanation_url)
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    assert client.get(result.explanation_url).content == first.content  # the sealed overlay, kept
    kept = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "ex").iterdir())
    assert kept == ["json", "npy.sm4", "png.sm4"]  # the patient image and its overlay are sealed at rest
    assert all(b"\x89PNG" not in p.read_bytes() and b"NUMPY" not in p.read_bytes() for p in (tmp_path / "ex").iterdir())
    escape = client.get("/v1/explanations/../../etc/passwd.png")  # normalised to /etc/passwd.png: no route
    assert (escape.status_code, escape.json()) == (404, {"error": "not_found", "detail": "Not Found"})
    unknown = client.get("/v1/explanations/" + "0" * 32 + ".png")
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"error": "not_found", "detail": f"no explanation '{'0' * 32}'"},
    )


@pytest.mark.parametrize(
    ("files", "data", "status", "words"),
    [
        ([("file", ("x.png", b"\x89PNG\r\n\x1a\nbroken"))], {}, 400, "task"),
        ([("file", ("x.png", b"\x89PNG\r\n\x1a\nbroken"))], {"task": "chest-xray"}, 400, "png/jpeg"),
        ([("file", ("ct.dcm", b""))], {}, 400, "empty"),
        ([("file", ("tiny.png", png_bytes(np.zeros((1, 1), np.uint8))))], {"task": "chest-xray"}, 400, "too small"),
        ([("file", ("ct.dcm", dicom_bytes("CT", frames=4)))], {"task": "chest-xray"}, 422, "3-d"),
        ([("file", ("ct.dcm", dicom_bytes("CT")))], {"task": "chest-xray"}, 422, "not modality ct"),
        ([("file", ("x.png", b"x"))], {"task": "no-such-task"}, 400, "unknown task"),
    ],
)
def test_bad_image_inputs(
    client: TestClient, files: list[tuple[str, tuple[str, bytes]]], data: dict[str, str], status: int, words: str
) -> None:
    r = client.post("/v1/screen", files=files, data=data)
    assert r.status_code == status, r.text
    expected_error = {400: "unknown_task" if words == "unknown task" else "invalid_study", 422: "unsupported_study"}
    assert r.json()["error"] == expected_error[status], r.text
    assert words in r.json()["detail"].lower()
    ok = client.post(
        "/v1/screen",
        files=[("file", ("c.png", png_bytes(blob_image(40, 0, np.random.default_rng(3)))))],
        data={"task": "chest-xray"},
    )
    assert ok.status_code == 200


def test_image_over_pixel_limit(image_models: dict[str, StoredModel], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESCREEN_MAX_IMAGE_PIXELS", "1000")
    get_settings.cache_clear()
    client = TestClient(create_app(ScreeningEngine(ModelStore())))
    png = png_bytes(blob_image(64, 0, np.random.default_rng(4)))
    r = client.post("/v1/screen", files=[("file", ("c.png", png))], data={"task": "chest-xray"})
    assert (r.status_code, r.json()) == (
        413,
        {"error": "too_large", "detail": "image has 4096 pixels; the limit is 1000"},  # 64 x 64
    )


def test_ct_without_task_is_422(client: TestClient) -> None:
    r = client.post("/v1/screen", files=[("file", ("ct.dcm", Path(get_testdata_file("CT_small.dcm")).read_bytes()))])
    assert (r.status_code, r.json()) == (
        422,
        {"error": "unsupported_study", "detail": "no model screens DICOM modality CT"},
    )


MALFORMED_DETAIL = {
    "WindowWidth": "DICOM image attributes cannot be interpreted (ValueError)",
    # the decoder's message quotes header values: the detail names the exception type only
    "PhotometricInterpretation": "pixel data (Explicit VR Little Endian) cannot be decoded: ValueError",
}


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("WindowWidth", 0), ("PhotometricInterpretation", "MONOCHROME3")],
)
def test_malformed_dicom_attributes_are_400(client: TestClient, attribute: str, value: object) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Modality = "CR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.WindowCenter = 100
    setattr(ds, attribute, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    r = client.post("/v1/screen", files=[("file", ("cr.dcm", buf.getvalue()))], data={"task": "chest-xray"})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "invalid_study", "detail": MALFORMED_DETAIL[attribute]}


@pytest.mark.data
def test_named_task_still_checks_the_body_part(client: TestClient, shared_data: Path) -> None:
    hand = (shared_data / "dicom" / "RG3_J2KR.dcm").read_bytes()  # CR of an EXTREMITY
    r = client.post("/v1/screen", files=[("file", ("rg3.dcm", hand))], data={"task": "chest-xray"})
    assert (r.status_code, r.json()) == (
        422,
        {"error": "unsupported_study", "detail": "chest-xray screens CHEST images, not body part EXTREMITY"},
    )
