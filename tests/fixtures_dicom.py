"""A real Orthanc for the integration tests (own config, storage and free ports), and tiny synthetic instances."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    TwelveLeadECGWaveformStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from prescreen.integration.dicom_send import DicomDestination
from tests.peers import ORTHANC_HINT, require_peer

ORTHANC = Path("/usr/sbin/Orthanc")
AE_TITLE = "ORTHANC"
START_TIMEOUT = 20.0
ATTEMPTS = 3


SOP_CLASSES = {
    "US": UltrasoundImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "ECG": TwelveLeadECGWaveformStorage,
}
PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-0001",
    "PatientBirthDate": "19700102",
    "PatientSex": "F",
    "AccessionNumber": "ACC-42",
    "StudyID": "STUDY-7",
    "StudyDate": "20240315",
    "StudyTime": "101112",
    "ReferringPhysicianName": "Who^Doctor",
}


def make_instance(
    modality: str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient: bool = True,
    file_meta: bool = True,
) -> pydicom.Dataset:
    """A tiny synthetic instance: a 4x4 image (US, CR, DX) or a one-lead, 10-sample ECG waveform.

    Args:
        modality: ``US``, ``CR``, ``DX`` or ``ECG``.
        study_uid: Study Instance UID (new if None).
        series_uid: Series Instance UID (new if None).
        patient: whether to set the patient and study attributes (else only UIDs and modality).
        file_meta: whether to add file meta (explicit VR little endian).
    """
    ds = pydicom.Dataset()
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if patient:
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
    if modality == "ECG":
        channel = pydicom.Dataset()
        channel.ChannelSensitivity = "1"
        channel.WaveformBitsStored = 16
        waveform = pydicom.Dataset()
        waveform.MultiplexGroupTimeOffset = "0"
        waveform.WaveformOriginality = "ORIGINAL"
        waveform.NumberOfWaveformChannels = 1
        waveform.NumberOfWaveformSamples = 10
        waveform.SamplingFrequency = "500"
        waveform.ChannelDefinitionSequence = [channel]
        waveform.WaveformBitsAllocated = 16
        waveform.WaveformSampleInterpretation = "SS"
        waveform.WaveformData = bytes(20)
        ds.WaveformSequence = [waveform]
    else:
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(16))
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: REST at ``http_url`` (no authentication), C-STORE SCP at ``destination``."""

    http_url: str
    dicom_port: int
    ae_title: str
    log: Path

    @property
    def destination(self) -> DicomDestination:
        return DicomDestination(self.ae_title, "127.0.0.1", self.dicom_port)

    def get(self, path: str) -> object:
        """GET a REST resource and return its JSON."""
        response = httpx.get(f"{self.http_url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(folder: Path, http_port: int, dicom_port: int) -> Path:
    config = {
        "Name": "prescreen-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AE_TITLE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
        "DicomModalities": {},
        "OrthancPeers": {},
        "HttpsVerifyPeers": False,
        "SaveJobs": False,
        "StorageCompression": False,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start(folder: Path) -> tuple[subprocess.Popen[bytes], OrthancServer]:
    """Start Orthanc on fresh ports; raise RuntimeError if it exits or does not answer in time."""
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(folder, http_port, dicom_port)
    log = folder / "orthanc.log"
    server = OrthancServer(f"http://127.0.0.1:{http_port}", dicom_port, AE_TITLE, log)
    with log.open("wb") as out:
        process = subprocess.Popen([str(ORTHANC), str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{_tail(log)}")
        try:
            answer = httpx.get(f"{server.http_url}/system", timeout=1)
            if answer.status_code == 200 and answer.json().get("DicomPort") == dicom_port and _listens(dicom_port):
                return process, server
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    _stop(process)
    raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT:g} s:\n{_tail(log)}")


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class _Orthanc:
    """One Orthanc process for the session, restarted if it died; emptied before each test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.server: OrthancServer | None = None

    def running(self) -> OrthancServer:
        if self.process is not None and self.server is not None and self.process.poll() is None:
            return self.server
        errors: list[str] = []
        for _ in range(ATTEMPTS):  # a port picked as free may be taken before Orthanc binds it
            self.starts += 1
            try:
                self.process, self.server = _start(self.root / f"run{self.starts}")
            except RuntimeError as exc:
                errors.append(str(exc))
                continue
            return self.server
        pytest.fail("Orthanc did not start:\n" + "\n---\n".join(errors))

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)


def _empty(server: OrthancServer) -> None:
    with httpx.Client(base_url=server.http_url, timeout=10) as client:
        patients = client.get("/patients")
        patients.raise_for_status()
        for patient in patients.json():
            client.delete(f"/patients/{patient}").raise_for_status()
        left = client.get("/instances").json()
    assert left == [], "Orthanc still holds instances after emptying it"


@pytest.fixture(scope="session")
def _orthanc_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Orthanc]:
    require_peer(f"Orthanc at {ORTHANC}", ORTHANC.is_file() and shutil.which(str(ORTHANC)) is not None, ORTHANC_HINT)
    holder = _Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield holder
    finally:
        holder.stop()  # terminate, then kill; Orthanc takes a few seconds to stop, hence one per session


@pytest.fixture
def orthanc(_orthanc_process: _Orthanc) -> OrthancServer:
    """A running Orthanc (REST without authentication, C-STORE SCP), empty at the start of the test.

    One process serves the session (Orthanc needs seconds to stop); it is restarted if it died.
    """
    server = _orthanc_process.running()
    _empty(server)
    return server
