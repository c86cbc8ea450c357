"""STOW-RS against a real server (uvicorn on a free port) with a real DICOMweb client."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
import uvicorn
from dicomweb_client import DICOMwebClient
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from prescreen.integration.stow import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH
from prescreen.serving.dicomweb import PREAMBLE, as_part10, dicomweb_router
from prescreen.serving.errors import install_error_handlers
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.schema import Instance

BOUNDARY = "stow-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


@dataclass
class Server:
    url: str
    ingestor: Ingestor
    http: requests.Session

    @property
    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=f"{self.url}/dicomweb", session=self.http)

    def instances(self) -> int:
        sessions: sessionmaker[Session] = self.ingestor.sessions
        with sessions() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)

    def blobs(self) -> list[bytes]:
        sessions: sessionmaker[Session] = self.ingestor.sessions
        with sessions() as session:
            return [self.ingestor.blobs.get(key) for key in session.scalars(select(Instance.blob_key))]


def make_app(tmp_path: Path) -> FastAPI:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    app = FastAPI()
    app.include_router(dicomweb_router)
    install_error_handlers(app)
    app.state.ingestor = Ingestor(session_factory(make_engine(url)), FileBlobStore(tmp_path / "blobs"))
    return app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    app = make_app(tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    with requests.Session() as http:
        yield Server(f"http://127.0.0.1:{port}", app.state.ingestor, http)
    uv.should_exit = True
    thread.join(10)
    sock.close()


def secondary_capture(study_uid: str | None = None) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "TEST-1"
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes([13, 10, 13, 10] * 4)  # CR LF bytes in the payload
    return ds


def encode(ds: pydicom.Dataset, part10: bool = True) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=part10)
    return buf.getvalue()


def multipart(*payloads: bytes) -> bytes:
    head = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + p for p in payloads) + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_store_instances_stores_both(server: Server) -> None:
    study = generate_uid()
    ds1, ds2 = secondary_capture(study), secondary_capture(study)
    response = server.client.store_instances([ds1, ds2])
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [
        ds1.SOPInstanceUID,
        ds2.SOPInstanceUID,
    ]
    item = response.ReferencedSOPSequence[0]
    assert item.ReferencedSOPClassUID == SecondaryCaptureImageStorage
    # dicomweb-client sends "Host: 127.0.0.1" without the port; the URLs follow the Host header
    assert item.RetrieveURL == (
        f"http://127.0.0.1/dicomweb/studies/{study}/series/{ds1.SeriesInstanceUID}/instances/{ds1.SOPInstanceUID}"
    )
    assert response.RetrieveURL == f"http://127.0.0.1/dicomweb/studies/{study}"
    assert "FailedSOPSequence" not in response
    assert server.instances() == 2
    # dicomweb-client sends in-memory datasets without the Part 10 preamble: stored as Part 10 files
    assert sorted(server.blobs()) == sorted(PREAMBLE + encode(ds, part10=False) for ds in (ds1, ds2))
    assert {pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in server.blobs()} == {
        ds1.SOPInstanceUID,
        ds2.SOPInstanceUID,
    }


def test_wrong_content_type_is_415(server: Server) -> None:
    r = server.http.post(
        f"{server.url}/dicomweb/studies", data=b'{"a": 1}', headers={"Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()) == (
        415,
        {
            "error": "unsupported_media_type",
            "detail": 'STOW-RS takes multipart/related; type="application/dicom", not application/json',
        },
    )
    r = server.http.post(
        f"{server.url}/dicomweb/studies",
        data=multipart(b"x"),
        headers={"Content-Type": f"multipart/related; type=application/dicom+json; boundary={BOUNDARY}"},
    )
    assert (r.status_code, r.json()) == (
        415,
        {
            "error": "unsupported_media_type",
            "detail": "STOW-RS here takes parts of type application/dicom, not application/dicom+json",
        },
    )
    assert server.instances() == 0


def test_malformed_body_is_400(server: Server) -> None:
    r = server.http.post(f"{server.url}/dicomweb/studies", data=b"no parts here", headers={"Content-Type": MULTIPART})
    assert r.status_code == 400 and r.json()["error"] == "invalid_study"


def test_garbage_part_fails_alone(server: Server) -> None:
    good = secondary_capture()
    r = server.http.post(
        f"{server.url}/dicomweb/studies",
        data=multipart(b"\r\nthis is not DICOM\r\n", encode(good)),
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json"},
    )
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/dicom+json"
    response = pydicom.Dataset.from_json(r.json())
    (failed,) = response.FailedSOPSequence
    assert failed.FailureReason == CANNOT_UNDERSTAND
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert response.ReferencedSOPSequence[0].RetrieveURL == (
        f"{server.url}/dicomweb/studies/{good.StudyInstanceUID}/series/{good.SeriesInstanceUID}"
        f"/instances/{good.SOPInstanceUID}"
    )
    assert server.instances() == 1
    assert server.blobs() == [encode(good)]  # a Part 10 file is stored byte for byte


def test_as_part10() -> None:
    ds = secondary_capture()
    assert as_part10(encode(ds)) == encode(ds)
    assert as_part10(encode(ds, part10=False))[128:132] == b"DICM"
    assert as_part10(b"junk") == b"junk"


def test_nothing_stored_is_409(server: Server) -> None:
    r = server.http.post(f"{server.url}/dicomweb/studies", data=multipart(b"junk"), headers={"Content-Type": MULTIPART})
    assert r.status_code == 409
    assert pydicom.Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason == CANNOT_UNDERSTAND


def test_same_instance_twice_is_stored_once(server: Server) -> None:
    ds = secondary_capture()
    first = server.client.store_instances([ds])
    second = server.client.store_instances([ds])
    for response in (first, second):
        assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert server.instances() == 1


def test_study_url_refuses_an_instance_of_another_study(server: Server) -> None:
    study = generate_uid()
    mine, other = secondary_capture(study), secondary_capture()
    response = server.client.store_instances([mine, other], study_instance_uid=study)  # 202: not raised
    (failed,) = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert failed.ReferencedSOPClassUID == SecondaryCaptureImageStorage
    assert failed.FailureReason == DATASET_DOES_NOT_MATCH
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [mine.SOPInstanceUID]
    with pytest.raises(requests.HTTPError) as info:
        server.client.store_instances([other], study_instance_uid=study)
    assert info.value.response is not None and info.value.response.status_code == 409
    assert server.instances() == 1


def test_storage_error_fails_the_part_with_out_of_resources(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(data: bytes) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(server.ingestor.blobs, "put", full_disk)
    r = server.http.post(
        f"{server.url}/dicomweb/studies",
        data=multipart(encode(secondary_capture())),
        headers={"Content-Type": MULTIPART},
    )
    assert r.status_code == 409
    assert pydicom.Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason == 0xA700


def test_no_ingestor_is_503() -> None:
    app = FastAPI()
    app.include_router(dicomweb_router)
    install_error_handlers(app)
    r = TestClient(app).post("/dicomweb/studies", content=multipart(b"x"), headers={"Content-Type": MULTIPART})
    assert (r.status_code, r.json()) == (
        503,
        {"error": "unavailable", "detail": "the service is starting: the study store is not open yet"},
    )
