"""Image tasks through a real ``prescreen serve`` process: content routing, task field, 422."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from prescreen.models.model_store import StoredModel
from tests.fixtures_images import blob_image, png_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.data]


def test_served_images(image_models: dict[str, StoredModel], shared_data: Path, server: str) -> None:
    us = (shared_data / "dicom" / "US1_UNCR.dcm").read_bytes()
    r = httpx.post(f"{server}/v1/screen", files=[("file", ("US1_UNCR.dcm", us))], timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["task"] == "breast-us"
    assert r.json()["model"]["version"] == image_models["breast-us"].card.version
    png = png_bytes(blob_image(64, 1, np.random.default_rng(0)))
    r = httpx.post(f"{server}/v1/screen", files=[("file", ("c.png", png))], data={"task": "chest-xray"}, timeout=60)
    assert r.status_code == 200 and r.json()["task"] == "chest-xray", r.text
    if r.json()["flagged"]:
        assert httpx.get(server + r.json()["explanation_url"], timeout=30).status_code == 200
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    r = httpx.post(f"{server}/v1/screen", files=[("file", ("ct.dcm", ct))], timeout=60)
    assert (r.status_code, r.json()) == (
        422,
        {"error": "unsupported_study", "detail": "no model screens DICOM modality CT"},
    )
    r = httpx.post(f"{server}/v1/screen", files=[("file", ("c.png", png))], timeout=60)
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid_study", "detail": "a PNG/JPEG study needs a 'task' field (breast-us or chest-xray)"},
    )
