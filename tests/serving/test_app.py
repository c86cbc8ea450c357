"""The REST API in-process (FastAPI TestClient): good studies, every kind of bad input."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from prescreen.config import get_settings
from prescreen.errors import InvalidStudyError, UnsupportedStudyError
from prescreen.models.model_store import ModelStore, StoredModel
from prescreen.models.routing import route_task
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.serving.app import create_app


@pytest.fixture
def client(tiny_model: StoredModel) -> TestClient:
    return TestClient(create_app(ScreeningEngine(ModelStore())))


def record_files(folder: Path, name: str) -> list[tuple[str, tuple[str, bytes]]]:
    return [
        ("file", (f"{name}.hea", (folder / f"{name}.hea").read_bytes())),
        ("file", (f"{name}.dat", (folder / f"{name}.dat").read_bytes())),
    ]


def test_screen_good_record(client: TestClient, synthetic_cinc: Path, tiny_model: StoredModel) -> None:
    r = client.post("/v1/screen", files=record_files(synthetic_cinc, "S00000"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "ecg-rhythm"
    assert body["model"] == {"name": "ecg-rhythm", "version": tiny_model.card.version}
    assert set(body["probabilities"]) == {"normal", "af", "other", "noisy"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert body["flagged"] == (body["score"] >= body["threshold"])
    assert (body["label"] != "normal") == body["flagged"]


def test_screen_dicom_ecg(client: TestClient) -> None:
    data = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
    r = client.post("/v1/screen", files=[("file", ("ecg.dcm", data))])
    assert r.status_code == 200, r.text
    assert r.json()["task"] == "ecg-rhythm"


def _dicom_without_waveform() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    del ds.WaveformSequence
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _bad_inputs(folder: Path) -> dict[str, tuple[list[tuple[str, tuple[str, bytes]]], int, str]]:
    hea = (folder / "S00000.hea").read_bytes()
    dat = (folder / "S00000.dat").read_bytes()
    lines = hea.decode().splitlines()
    first = lines[0].split()
    more = " ".join([first[0], first[1], first[2], str(int(first[3]) * 2)])
    zero_fs = " ".join([first[0], first[1], "0", first[3]])
    nan_dat = b"\x00\x80" * (len(dat) // 2)
    return {
        "empty file": ([("file", ("S00000.hea", hea)), ("file", ("S00000.dat", b""))], 400, "empty"),
        "header without data": ([("file", ("S00000.hea", hea))], 400, "missing"),
        "truncated data": ([("file", ("S00000.hea", hea)), ("file", ("S00000.dat", dat[:100]))], 400, "truncated"),
        "header disagrees": (
            [("file", ("S00000.hea", "\n".join([more, *lines[1:]]).encode())), ("file", ("S00000.dat", dat))],
            400,
            "S00000",
        ),
        "NaN samples": ([("file", ("S00000.hea", hea)), ("file", ("S00000.dat", nan_dat))], 400, "NaN"),
        "sampling rate 0": (
            [("file", ("S00000.hea", "\n".join([zero_fs, *lines[1:]]).encode())), ("file", ("S00000.dat", dat))],
            400,
            "sampling",
        ),
        "non-ECG DICOM": (
            [("file", ("ct.dcm", Path(get_testdata_file("CT_small.dcm")).read_bytes()))],
            422,
            "no model screens DICOM modality CT",
        ),
        "DICOM without waveform": ([("file", ("ecg.dcm", _dicom_without_waveform()))], 400, "waveform"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty file",
        "header without data",
        "truncated data",
        "header disagrees",
        "NaN samples",
        "sampling rate 0",
        "non-ECG DICOM",
        "DICOM without waveform",
    ],
)
def test_bad_input_is_4xx_with_reason_and_service_keeps_working(
    client: TestClient, synthetic_cinc: Path, case: str
) -> None:
    files, status, words = _bad_inputs(synthetic_cinc)[case]
    r = client.post("/v1/screen", files=files)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == {400: "invalid_study", 422: "unsupported_study"}[status], body
    assert words.lower() in body["detail"].lower(), body
    again = client.post("/v1/screen", files=record_files(synthetic_cinc, "S00001"))
    assert again.status_code == 200


def test_no_file(client: TestClient) -> None:
    r = client.post("/v1/screen")
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid_study", "detail": "no file was sent; send the study as multipart field 'file'"},
    )


def test_upload_over_limit_is_413(
    tiny_model: StoredModel, synthetic_cinc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESCREEN_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()
    client = TestClient(create_app(ScreeningEngine(ModelStore())))
    r = client.post("/v1/screen", files=record_files(synthetic_cinc, "S00000"))
    assert (r.status_code, r.json()) == (
        413,
        {"error": "too_large", "detail": "the upload exceeds the limit of 1000 bytes"},
    )


def test_models_and_health(client: TestClient, tiny_model: StoredModel) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [m["version"] for m in models if m["task"] == "ecg-rhythm"] == [tiny_model.card.version]
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["clock"]["source"] in ("adjtimex", "unavailable") and "synchronized" in ready["clock"]
    assert ready["replication"] == {"configured": False, "running": False}
    assert client.get("/v1/status").json() == ready


def test_readyz_before_models_loaded() -> None:
    r = TestClient(create_app(None)).get("/readyz")
    assert (r.status_code, r.json()["status"]) == (503, "starting")


def test_route_task() -> None:
    assert route_task({"a.hea": b"x", "a.dat": b"y"}) == "ecg-rhythm"
    assert route_task({"x.png": b"x"}, "ecg-rhythm") == "ecg-rhythm"
    with pytest.raises(InvalidStudyError, match="needs a 'task' field"):
        route_task({"x.png": b"\x89PNG"})
    with pytest.raises(UnsupportedStudyError, match="no model screens"):
        route_task({"notes.txt": b"hello"})


def test_chunked_upload_over_limit_is_413(
    tiny_model: StoredModel, synthetic_cinc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESCREEN_MAX_UPLOAD_BYTES", "2000")
    get_settings.cache_clear()
    client = TestClient(create_app(ScreeningEngine(ModelStore())))
    boundary = "b0undary"
    dat = (synthetic_cinc / "S00000.dat").read_bytes()
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="S00000.dat"\r\n\r\n').encode()
    body += dat + f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    r = client.post(
        "/v1/screen", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert (r.status_code, r.json()) == (
        413,
        {"error": "too_large", "detail": "the upload exceeds the limit of 2000 bytes"},
    ), r.text


@pytest.mark.parametrize(
    ("header", "words"),
    [("r 1 0.0001 10", "outside"), ("r 1 900000 10", "outside")],
)
def test_absurd_sampling_rates_are_refused(client: TestClient, header: str, words: str) -> None:
    hea = f"{header}\nr.dat 16 1000 16 0 0 0 0 ECG\n".encode()
    r = client.post("/v1/screen", files=[("file", ("r.hea", hea)), ("file", ("r.dat", b"\x00\x00" * 10))])
    assert r.status_code == 400 and words in r.json()["detail"], r.text


def test_dot_file_names_are_refused(client: TestClient) -> None:
    r = client.post("/v1/screen", files=[("file", ("x.hea", b"x 1 300 10\n")), ("file", ("..", b"abc"))])
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid_study", "detail": "file name '..' is not a plain WFDB file name"},
    )


def test_every_screening_answer_waits_for_its_audit_record(
    tiny_model: StoredModel, synthetic_cinc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is committed beside the screening: a finding and an error each come with one
    (who sent how many files and bytes, the task asked for), and an answer whose record could not
    be written is an error, not a finding."""
    from prescreen.pipeline.runtime import open_store
    from prescreen.store import audit as store_audit

    app = create_app(ScreeningEngine(ModelStore()))
    app.state.ingestor = open_store(get_settings())
    client = TestClient(app, raise_server_exceptions=False)

    def screened() -> list[Any]:
        with app.state.ingestor.sessions() as session:
            return [json.loads(r.detail) for r in store_audit.iter_records(session) if r.event == "screened"]

    files = record_files(synthetic_cinc, "S00000")
    assert client.post("/v1/screen", files=files).status_code == 200
    size = sum(len(data) for _, (_, data) in files)
    assert screened() == [{"files": 2, "bytes": size, "task": None}]
    bad = client.post("/v1/screen", files=[("file", ("x.dcm", b"not a dicom"))], data={"task": "breast-us"})
    assert bad.is_client_error
    assert screened()[-1] == {"files": 1, "bytes": 11, "task": "breast-us"}

    def broken(*_: object) -> None:
        raise RuntimeError("the audit database is gone")

    monkeypatch.setattr("prescreen.serving.app.record_now", broken)
    assert client.post("/v1/screen", files=files).status_code == 500
    assert len(screened()) == 2
