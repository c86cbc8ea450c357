"""What a hostile or broken sender posts to ``/v1/screen``: decompression bombs are refused from
their headers before decoding (413, at once), truncated pixel data is a 400, images without
content are not assessable (422, never flagged or cleared), a WFDB header's numbers are checked,
and error details never quote header bytes. Plus the bounded query parameters."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import JPEG2000

from prescreen.models.model_store import ModelStore
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.serving.app import create_app
from tests.fixtures_dicom import make_instance


@pytest.fixture(scope="module")
def engine() -> ScreeningEngine:
    return ScreeningEngine(ModelStore())


@pytest.fixture
def client(engine: ScreeningEngine) -> TestClient:
    return TestClient(create_app(engine))


def encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bomb_dicom(rows: int, columns: int, frames: int = 1, samples: int = 1, bits: int = 16) -> bytes:
    """A few-KB US DICOM whose JPEG 2000 header-level attributes declare a huge image."""
    ds = make_instance("US")
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.file_meta.TransferSyntaxUID = JPEG2000
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(64)] * frames)
    ds["PixelData"].VR = "OB"
    return encode(ds)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png(width: int, height: int, rows_present: int) -> bytes:
    """A gray PNG whose header declares ``height`` rows but whose data holds ``rows_present``."""
    raw = b"".join(b"\x00" + bytes(range(256)) * (width // 256) + bytes(width % 256) for _ in range(rows_present))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("rows", "columns", "frames", "samples"),
    [(10000, 10000, 1, 1), (7000, 7000, 2, 3)],
)
def test_a_jpeg2000_bomb_is_413_before_decoding(
    client: TestClient, rows: int, columns: int, frames: int, samples: int
) -> None:
    body = bomb_dicom(rows, columns, frames, samples)
    assert len(body) < 10_000
    started = time.monotonic()
    r = client.post("/v1/screen", files=[("file", ("bomb.dcm", body))])
    assert time.monotonic() - started < 1.0
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "too_large" and "MiB decoded; the limit is 256 MiB" in r.json()["detail"]


def test_a_png_bomb_is_413_before_decoding(client: TestClient) -> None:
    body = png_bytes(Image.new("1", (10000, 10000)))
    started = time.monotonic()
    r = client.post("/v1/screen", files=[("file", ("bomb.png", body))], data={"task": "breast-us"})
    assert time.monotonic() - started < 1.0
    assert (r.status_code, r.json()["error"]) == (413, "too_large"), r.text


def test_a_png_over_pillows_own_limit_is_413_not_an_unreadable_file(client: TestClient) -> None:
    """20000 x 20000 is over Pillow's bomb limit (179 M pixels): the service's own limits answer."""
    r = client.post(
        "/v1/screen", files=[("file", ("big.png", truncated_png(20000, 20000, 1)))], data={"task": "breast-us"}
    )
    assert (r.status_code, r.json()["error"]) == (413, "too_large"), r.text


def test_a_truncated_png_is_400(client: TestClient) -> None:
    r = client.post(
        "/v1/screen", files=[("file", ("t.png", truncated_png(4000, 4000, 10)))], data={"task": "breast-us"}
    )
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid_study", "detail": "the PNG image data is truncated: it holds 0 % of the declared image"},
    )


def test_a_complete_png_passes_the_truncation_check(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    body = png_bytes(Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)))
    assert client.post("/v1/screen", files=[("file", ("ok.png", body))], data={"task": "breast-us"}).status_code == 200


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (Image.fromarray(np.full((256, 256), 1000, np.uint16)), "the image is blank (near-constant pixel values)"),
        (
            Image.fromarray(np.zeros((16, 1000), np.uint8) + np.arange(1000, dtype=np.uint8)),
            "an aspect ratio of 1000x16",
        ),
    ],
)
def test_an_image_without_content_is_not_assessable(client: TestClient, image: Image.Image, reason: str) -> None:
    r = client.post("/v1/screen", files=[("file", ("x.png", png_bytes(image)))], data={"task": "breast-us"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "not_assessable" and r.json()["detail"].startswith(f"not assessable: {reason}")


def test_a_mostly_empty_image_is_not_assessable(client: TestClient) -> None:
    pixels = np.zeros((400, 400), np.uint8)
    pixels[:8] = np.random.default_rng(1).integers(0, 255, (8, 400))
    r = client.post(
        "/v1/screen", files=[("file", ("x.png", png_bytes(Image.fromarray(pixels))))], data={"task": "breast-us"}
    )
    assert r.status_code == 422 and "mostly empty" in r.json()["detail"], r.text


@pytest.mark.data
def test_a_negative_wfdb_sampling_rate_is_400(client: TestClient, shared_data: Path) -> None:
    hea = (shared_data / "cinc2017/A00001.hea").read_text().replace(" 300 ", " -300 ", 1).encode()
    dat = (shared_data / "cinc2017/A00001.dat").read_bytes()
    r = client.post("/v1/screen", files=[("file", ("A00001.hea", hea)), ("file", ("A00001.dat", dat))])
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid_study", "detail": "WFDB header A00001.hea: the sampling rate must be a non-negative number"},
    )


@pytest.mark.data
@pytest.mark.parametrize("task", [None, "breast-us"])
def test_a_corrupt_modality_length_is_4xx_without_header_bytes(
    client: TestClient, shared_data: Path, task: str | None
) -> None:
    data = bytearray((shared_data / "dicom/US1_UNCR.dcm").read_bytes())
    at = data.find(b"\x08\x00\x60\x00CS")
    data[at + 6 : at + 8] = b"\xf0\xff"  # Modality now swallows the next 65520 bytes of the header
    r = client.post("/v1/screen", files=[("file", ("us.dcm", bytes(data)))], data={"task": task} if task else {})
    assert (r.status_code, r.json()) == (
        400,
        {
            "error": "invalid_study",
            "detail": "the DICOM Modality attribute is malformed: expected up to 16 letters, digits or _",
        },
    )


@pytest.mark.data
def test_error_details_name_no_server_path(client: TestClient, shared_data: Path) -> None:
    """A WFDB record is read from a temporary folder; its errors name the file, not the folder."""
    hea = (shared_data / "cinc2017/A00001.hea").read_bytes()
    r = client.post("/v1/screen", files=[("file", ("A00001.hea", hea)), ("file", ("A00001.dat", b"\x01\x02"))])
    assert r.status_code == 400, r.text
    assert "/tmp" not in r.json()["detail"] and "prescreen-" not in r.json()["detail"], r.json()


def wfdb_record(tmp_path: Path, seconds: float, fs: int = 300) -> list[tuple[str, tuple[str, bytes]]]:
    import wfdb

    t = np.arange(int(seconds * fs)) / fs
    signal = (np.sin(2 * np.pi * 1.2 * t) * 0.8 + 0.05 * np.random.default_rng(0).normal(size=t.size))[:, None]
    wfdb.wrsamp("long", fs=fs, units=["mV"], sig_name=["II"], p_signal=signal, fmt=["16"], write_dir=str(tmp_path))
    return [("file", (name, (tmp_path / name).read_bytes())) for name in ("long.hea", "long.dat")]


def test_a_record_longer_than_the_request_limit_is_413_naming_the_queue(
    engine: ScreeningEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prescreen.config import get_settings

    monkeypatch.setenv("PRESCREEN_MAX_SCREEN_RECORD_SECONDS", "120")
    monkeypatch.setenv("PRESCREEN_MAX_SCREEN_HOLTER_SECONDS", "900")
    get_settings.cache_clear()
    client = TestClient(create_app(engine))
    assert client.post("/v1/screen", files=wfdb_record(tmp_path, 60)).status_code == 200
    for seconds in (300, 1200):  # a strip over its limit; an ambulatory record over its own
        r = client.post("/v1/screen", files=wfdb_record(tmp_path, seconds))
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "too_large" and "/v1/studies" in r.json()["detail"]


def test_a_request_finding_every_slot_busy_gets_503_with_retry_after(
    engine: ScreeningEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prescreen.config import get_settings

    monkeypatch.setenv("PRESCREEN_MAX_CONCURRENT_SCREENS", "1")
    monkeypatch.setenv("PRESCREEN_SCREEN_WAIT_SECONDS", "0.2")
    get_settings.cache_clear()
    app = create_app(engine)
    client = TestClient(app)
    record = wfdb_record(tmp_path, 30)
    assert app.state.screen_slots.acquire(timeout=1)  # another request is screening
    try:
        r = client.post("/v1/screen", files=record)
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "unavailable", "5"), r.text
    finally:
        app.state.screen_slots.release()
    assert client.post("/v1/screen", files=record).status_code == 200


def wfdb_signal(tmp_path: Path, signal: np.ndarray, fs: int = 300) -> list[tuple[str, tuple[str, bytes]]]:
    import wfdb

    wfdb.wrsamp(
        "ecg", fs=fs, units=["mV"], sig_name=["II"], p_signal=signal[:, None], fmt=["16"], write_dir=str(tmp_path)
    )
    return [("file", (name, (tmp_path / name).read_bytes())) for name in ("ecg.hea", "ecg.dat")]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("flat", "the ECG lead II is flat"), ("saturated", "the ECG lead is saturated")],
)
def test_a_flat_or_saturated_ecg_is_not_assessable(client: TestClient, tmp_path: Path, kind: str, reason: str) -> None:
    t = np.arange(30 * 300) / 300
    flat = 0.001 * np.sin(2 * np.pi * t)
    clipped = np.clip(3.0 * np.sin(2 * np.pi * 1.1 * t), -1.0, 1.0)  # an amplifier on its rails half the time
    signal = flat if kind == "flat" else clipped
    r = client.post("/v1/screen", files=wfdb_signal(tmp_path, signal))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "not_assessable" and r.json()["detail"].startswith(f"not assessable: {reason}")
