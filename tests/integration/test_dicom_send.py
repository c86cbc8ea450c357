"""C-STORE SCU: destinations, and sending to a real Orthanc and to in-process pynetdicom SCPs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid
from pynetdicom import AE, evt

from prescreen.domain import Finding
from prescreen.errors import DeliveryError, PrescreenError
from prescreen.integration.dicom_send import DicomDestination, InvalidDestinationError, c_store
from prescreen.integration.sr import build_sr
from tests.fixtures_dicom import SOP_CLASSES, OrthancServer, free_port, make_instance

# --- DicomDestination -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ae", "host", "port"),
    [
        ("PACS@pacs.example.org:104", "PACS", "pacs.example.org", 104),
        ("ORTHANC@127.0.0.1:4242", "ORTHANC", "127.0.0.1", 4242),
        (" STORE_SCP@localhost:65535 ", "STORE_SCP", "localhost", 65535),
        ("SIXTEEN_CHARS_AE@h:1", "SIXTEEN_CHARS_AE", "h", 1),
        ("A@B@host:11112", "A@B", "host", 11112),
        ("V6@[::1]:11112", "V6", "::1", 11112),
    ],
)
def test_parse_good(text: str, ae: str, host: str, port: int) -> None:
    destination = DicomDestination.parse(text)
    assert (destination.ae_title, destination.host, destination.port) == (ae, host, port)
    assert DicomDestination.parse(str(destination)) == destination
    assert str(destination) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected AE@host:port"),
        ("PACS", "expected AE@host:port"),
        ("PACS@host", "expected AE@host:port"),
        ("@host:104", "expected AE@host:port"),
        ("PACS@host:", "not a number"),
        ("PACS@host:abc", "not a number"),
        ("PACS@host:-1", "not a number"),
        ("PACS@host:0", "between 1 and 65535"),
        ("PACS@host:65536", "between 1 and 65535"),
        ("SEVENTEEN_CHARS_A@host:104", "longer than 16"),
        ("PA\\CS@host:104", "backslash"),
        ("PACS@:104", "not a host"),
        ("PACS@my host:104", "not a host"),
        ("PACS@::1:104", "expected AE@host:port"),
        ("PACS@[::1]104", "expected AE@host:port"),
    ],
)
def test_parse_bad(text: str, message: str) -> None:
    with pytest.raises(InvalidDestinationError, match=message) as info:
        DicomDestination.parse(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PrescreenError)


def test_constructor_validates() -> None:
    with pytest.raises(InvalidDestinationError, match="between 1 and 65535"):
        DicomDestination("PACS", "host", 70000)
    with pytest.raises(InvalidDestinationError, match="called AE title is empty"):
        DicomDestination("   ", "host", 104)
    assert DicomDestination(" PACS ", "host", 104).ae_title == "PACS"


# --- c_store to Orthanc -----------------------------------------------------------------------


def finding(series_uid: str) -> Finding:
    return Finding(
        series_uid=series_uid,
        task="chest-xray",
        model_name="tiny-densenet",
        model_version="1.0.0",
        flagged=True,
        label="pneumonia",
        score=0.9,
        threshold=0.5,
    )


def lookup_study_uid(orthanc: OrthancServer, sop_instance_uid: str) -> str:
    """The Study Instance UID Orthanc filed an instance under."""
    instance_ids = _find(orthanc, "Instance", {"SOPInstanceUID": sop_instance_uid})
    assert len(instance_ids) == 1
    study = orthanc.get(f"/instances/{instance_ids[0]}/study")
    assert isinstance(study, dict)
    return str(study["MainDicomTags"]["StudyInstanceUID"])


def _find(orthanc: OrthancServer, level: str, query: dict[str, str]) -> list[str]:
    """Orthanc ids of the resources at that level matching the query (``POST /tools/find``)."""
    response = httpx.post(f"{orthanc.http_url}/tools/find", json={"Level": level, "Query": query}, timeout=10)
    response.raise_for_status()
    return [str(i) for i in response.json()]


@pytest.mark.parametrize("modality", ["CR", "US", "ECG"])
def test_c_store_sr_joins_source_study_in_orthanc(orthanc: OrthancServer, modality: str) -> None:
    source = make_instance(modality)
    sr = build_sr([source], [finding(source.SeriesInstanceUID)])
    c_store([source, sr], orthanc.destination, timeout=10)

    assert len(orthanc.get("/instances")) == 2  # type: ignore[arg-type]
    studies = _find(orthanc, "Study", {"StudyInstanceUID": source.StudyInstanceUID})
    assert len(studies) == 1
    assert lookup_study_uid(orthanc, sr.SOPInstanceUID) == source.StudyInstanceUID
    assert lookup_study_uid(orthanc, source.SOPInstanceUID) == source.StudyInstanceUID
    series = orthanc.get(f"/studies/{studies[0]}/series")
    assert isinstance(series, list)
    modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
    assert modalities == sorted(["SR", modality])
    study = orthanc.get(f"/studies/{studies[0]}")
    assert isinstance(study, dict)
    assert study["PatientMainDicomTags"]["PatientID"] == source.PatientID


def test_c_store_dataset_without_file_meta(orthanc: OrthancServer) -> None:
    source = make_instance("DX", file_meta=False)
    c_store([source], orthanc.destination, calling_ae="PRESCREEN_TEST", timeout=10)
    assert lookup_study_uid(orthanc, source.SOPInstanceUID) == source.StudyInstanceUID
    assert not hasattr(source, "file_meta") or "TransferSyntaxUID" not in source.file_meta  # caller's dataset intact


@pytest.mark.data
def test_c_store_compressed_sample_and_its_sr(orthanc: OrthancServer, shared_data: Path) -> None:
    source = pydicom.dcmread(shared_data / "dicom" / "cr_chest_rsna_sample.dcm")
    assert source.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    sr = build_sr([source], [finding(source.SeriesInstanceUID)])
    c_store([source, sr], orthanc.destination, timeout=10)
    assert lookup_study_uid(orthanc, sr.SOPInstanceUID) == source.StudyInstanceUID
    instance = _find(orthanc, "Instance", {"SOPInstanceUID": source.SOPInstanceUID})[0]
    syntax = httpx.get(f"{orthanc.http_url}/instances/{instance}/metadata/TransferSyntax", timeout=10)
    assert syntax.text == JPEGBaseline8Bit  # stored as sent, not transcoded


def test_c_store_nothing_to_send_does_not_connect() -> None:
    c_store([], DicomDestination("NOBODY", "127.0.0.1", free_port()), timeout=1)


# --- failures -----------------------------------------------------------------------------------


def test_c_store_nothing_listening_fails_fast() -> None:
    destination = DicomDestination("NOBODY", "127.0.0.1", free_port())
    start = time.monotonic()
    with pytest.raises(DeliveryError, match=r"cannot associate with NOBODY@127\.0\.0\.1"):
        c_store([make_instance("US")], destination, timeout=5)
    assert time.monotonic() - start < 5  # a bound, not a value: elapsed time (refused at once, well under the timeout)


def test_c_store_dataset_without_uid_sends_nothing() -> None:
    source = make_instance("US")
    del source.SOPInstanceUID
    with pytest.raises(DeliveryError, match="dataset 2 lacks"):
        c_store([make_instance("US"), source], DicomDestination("NOBODY", "127.0.0.1", free_port()), timeout=1)


def test_c_store_bad_calling_ae() -> None:
    with pytest.raises(InvalidDestinationError, match="calling AE title"):
        c_store([make_instance("US")], DicomDestination("X", "127.0.0.1", 104), calling_ae="X" * 17)


StoreHandler = Callable[[Any], int]


@pytest.fixture
def scp() -> Iterator[Callable[..., DicomDestination]]:
    """Start in-process pynetdicom C-STORE SCPs; each answers with what its handler returns."""
    servers: list[Any] = []

    def start(handler: StoreHandler, *, ae_title: str = "TESTSCP", require_called: bool = False) -> DicomDestination:
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called
        for sop_class in SOP_CLASSES.values():
            ae.add_supported_context(sop_class)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)]))
        return DicomDestination(ae_title, "127.0.0.1", port)

    yield start
    for server in servers:
        server.shutdown()


def test_c_store_rejected_association(scp: Callable[..., DicomDestination]) -> None:
    destination = scp(lambda event: 0x0000, require_called=True)
    wrong = DicomDestination("SOMEONE_ELSE", destination.host, destination.port)
    with pytest.raises(DeliveryError, match="rejected"):
        c_store([make_instance("US")], wrong, timeout=5)


@pytest.mark.parametrize("status", [0xA700, 0xC000, 0x0122])
def test_c_store_failure_status(scp: Callable[..., DicomDestination], status: int) -> None:
    destination = scp(lambda event: status)
    with pytest.raises(DeliveryError, match=f"failed with status 0x{status:04X}"):
        c_store([make_instance("CR")], destination, timeout=5)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB006, 0xB007])
def test_c_store_success_and_warning_statuses(scp: Callable[..., DicomDestination], status: int) -> None:
    received: list[str] = []

    def handler(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return status

    destination = scp(handler)
    sources = [make_instance("CR"), make_instance("ECG", file_meta=False)]
    c_store(sources, destination, timeout=5)
    assert received == [s.SOPInstanceUID for s in sources]


def test_c_store_unaccepted_sop_class(scp: Callable[..., DicomDestination]) -> None:
    destination = scp(lambda event: 0x0000)
    other = make_instance("CR")
    other.SOPClassUID = other.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")  # CT, not supported
    with pytest.raises(DeliveryError, match="cannot take a CT Image Storage instance"):
        c_store([make_instance("CR"), other], destination, timeout=5)


def test_c_store_no_answer_times_out(scp: Callable[..., DicomDestination]) -> None:
    def slow(event: Any) -> int:
        time.sleep(2)
        return 0x0000

    destination = scp(slow)
    start = time.monotonic()
    with pytest.raises(DeliveryError, match="no answer within 1 s"):
        c_store([make_instance("US", series_uid=generate_uid())], destination, timeout=1)
    assert time.monotonic() - start < 2  # a bound, not a value: elapsed time (the 1 s timeout, not the 2 s answer)
