"""The DICOM listener in-process, driven by DCMTK (echoscu, storescu) and a pynetdicom SCU:
echo, store, duplicates, the calling-AE allow-list, unsupported SOP classes, the failure
statuses (0xA900, 0xC210, 0xA700) and concurrent senders of one study."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import func, select

from prescreen.config import Settings
from prescreen.integration.listener import (
    CANNOT_DECODE,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    start_listener,
    store_status,
)
from prescreen.pipeline.runtime import open_store
from prescreen.store.blobs import FileBlobStore
from prescreen.store.ingest import Ingestor
from prescreen.store.schema import Instance, Series, Study
from tests.peers import DCMTK_PATH_ENV, dcmtk, find_dcmtk, require_peer

AE_TITLE = "PRESCREEN"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def synthetic(
    modality: str = "CR",
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_class: str = ComputedRadiographyImageStorage,
    size: int = 8,
) -> Dataset:
    """A small image instance with file meta (explicit VR little endian)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientID = "PID-1"
    ds.PatientName = "Doe^Jane"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(i % 256 for i in range(size * size))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Listener:
    ingestor: Ingestor
    settings: Settings
    server: ThreadedAssociationServer

    @property
    def port(self) -> int:
        return self.settings.dicom_port

    def count(self, table: type) -> int:
        with self.ingestor.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def counts(self) -> tuple[int, int, int]:
        return self.count(Study), self.count(Series), self.count(Instance)


StartListener = Callable[..., Listener]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartListener]:
    """Starts listeners (allow-list and blob store chosen per test); all shut down afterwards."""
    servers: list[ThreadedAssociationServer] = []

    def _start(allowed: list[str] | None = None, blobs: object | None = None, limit: int = 200_000_000) -> Listener:
        settings = Settings(
            dicom_port=free_port(),
            dicom_ae_title=AE_TITLE,
            dicom_allowed_aes=allowed or [],
            home=tmp_path,
            max_upload_bytes=limit,
        )
        ingestor = open_store(settings)
        if blobs is not None:
            ingestor = Ingestor(ingestor.sessions, blobs)  # type: ignore[arg-type]
        server = start_listener(ingestor, settings, host=HOST)
        assert server is not None
        servers.append(server)
        return Listener(ingestor, settings, server)

    yield _start
    for server in servers:
        server.shutdown()


def storescu(port: int, *files: Path, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk("storescu"), "-aet", calling, "-aec", AE_TITLE, HOST, str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def scu_associate(port: int, *sop_classes: str, calling: str = "PYSCU") -> object:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    return ae.associate(HOST, port, ae_title=AE_TITLE)


def test_echo(start: StartListener) -> None:
    echoscu = dcmtk("echoscu")
    listener = start()
    r = subprocess.run(
        [echoscu, "-aec", AE_TITLE, HOST, str(listener.port)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr


def test_dcmtk_is_found_by_its_version_not_by_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom installs scripts named ``storescu``/``echoscu`` into the venv, and anything may be
    called so: neither stands in for DCMTK, whose absence fails the DICOM tests under CI."""
    impostor = tmp_path / "storescu"
    impostor.write_text("#!/bin/sh\necho 'storescu v3.6.7'\n")
    impostor.chmod(0o755)
    monkeypatch.setenv(DCMTK_PATH_ENV, os.pathsep.join([str(tmp_path), str(Path(sys.executable).parent)]))
    assert find_dcmtk("storescu") is None
    assert find_dcmtk("echoscu") is None
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing under CI, which must run this test: DCMTK storescu"):
        dcmtk("storescu")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="missing: DCMTK storescu"):
        dcmtk("storescu")
    with pytest.raises(pytest.skip.Exception, match="missing: PostgreSQL"):  # the same rule for every peer
        require_peer("PostgreSQL", False, "apt-get install postgresql")


def test_off_when_port_is_zero(tmp_path: Path) -> None:
    settings = Settings(dicom_port=0, home=tmp_path)
    assert start_listener(open_store(settings), settings, host=HOST) is None


@pytest.mark.data
def test_store_shipped_us_and_synthetic_cr(start: StartListener, shared_data: Path, tmp_path: Path) -> None:
    listener = start()
    us = shared_data / "dicom" / "US1_UNCR.dcm"
    cr = write(synthetic("CR"), tmp_path / "cr.dcm")
    for path in (us, cr):
        r = storescu(listener.port, path)
        assert r.returncode == 0, r.stdout + r.stderr
    assert listener.counts() == (2, 2, 2)
    for path in (us, cr):
        sent = pydicom.dcmread(path)
        with listener.ingestor.sessions() as session:
            row = session.scalars(select(Instance).where(Instance.sop_instance_uid == sent.SOPInstanceUID)).one()
            series = session.get(Series, row.series_id)
            assert series is not None and series.series_uid == sent.SeriesInstanceUID
            assert series.modality == sent.Modality
            study = session.get(Study, series.study_id)
            assert study is not None and study.study_uid == sent.StudyInstanceUID
            assert study.sender == "STORESCU" and study.status == "received"
            assert row.sop_class_uid == sent.SOPClassUID
        blob = listener.ingestor.blobs.get(row.blob_key)
        assert row.size_bytes == len(blob)
        stored = pydicom.dcmread(io.BytesIO(blob))
        assert stored.SOPInstanceUID == sent.SOPInstanceUID
        assert stored.PixelData == sent.PixelData
        assert stored.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        stored.file_meta = sent.file_meta = FileMetaDataset()
        sent.pop(0xFFFCFFFC, None)  # storescu drops Data Set Trailing Padding (US1_UNCR has it)
        assert stored == sent  # the whole dataset, element by element


def test_same_instance_twice_is_stored_once(start: StartListener, tmp_path: Path) -> None:
    listener = start()
    path = write(synthetic("CR"), tmp_path / "cr.dcm")
    for _ in range(2):
        r = storescu(listener.port, path)
        assert r.returncode == 0, r.stdout + r.stderr
    assert listener.counts() == (1, 1, 1)
    assoc = scu_associate(listener.port, ComputedRadiographyImageStorage)
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        status = assoc.send_c_store(pydicom.dcmread(path))  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status.Status == SUCCESS  # a duplicate is acknowledged ...
    assert listener.counts() == (1, 1, 1)  # ... and stored once


def test_calling_ae_allow_list(start: StartListener, tmp_path: Path) -> None:
    listener = start(allowed=["GOODAE"])
    path = write(synthetic("CR"), tmp_path / "cr.dcm")
    bad = storescu(listener.port, path, calling="BADAE")
    assert bad.returncode == 1 and "reject" in (bad.stdout + bad.stderr).lower(), bad.stdout + bad.stderr
    assert listener.counts() == (0, 0, 0)
    assoc = scu_associate(listener.port, ComputedRadiographyImageStorage, calling="BADAE")
    assert assoc.is_rejected  # type: ignore[attr-defined]
    good = storescu(listener.port, path, calling="GOODAE")
    assert good.returncode == 0, good.stdout + good.stderr
    assert listener.counts() == (1, 1, 1)


def test_unsupported_sop_class_is_not_negotiated(start: StartListener, tmp_path: Path) -> None:
    listener = start()
    pdf = synthetic("DOC", sop_class=EncapsulatedPDFStorage)
    path = write(pdf, tmp_path / "pdf.dcm")
    r = storescu(listener.port, path)
    out = (r.stdout + r.stderr).lower()
    assert r.returncode == 1 and "no presentation context" in out, out
    assoc = scu_associate(listener.port, EncapsulatedPDFStorage, ComputedRadiographyImageStorage)
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        accepted = {c.abstract_syntax for c in assoc.accepted_contexts}  # type: ignore[attr-defined]
        rejected = {c.abstract_syntax for c in assoc.rejected_contexts}  # type: ignore[attr-defined]
        assert EncapsulatedPDFStorage in rejected and EncapsulatedPDFStorage not in accepted
        assert ComputedRadiographyImageStorage in accepted
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(pdf)  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert listener.counts() == (0, 0, 0)


def test_missing_study_uid_is_0xA900(start: StartListener) -> None:
    listener = start()
    ds = synthetic("CR")
    del ds.StudyInstanceUID
    assoc = scu_associate(listener.port, ComputedRadiographyImageStorage)
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status.Status == DATASET_MISMATCH
    assert "StudyInstanceUID" in status.ErrorComment
    assert listener.counts() == (0, 0, 0)


def test_undecodable_bytes_direct_is_0xC210(tmp_path: Path) -> None:
    ingestor = open_store(Settings(home=tmp_path, dicom_port=0))
    status = store_status(ingestor, b"garbage", "X")
    assert status.Status == CANNOT_DECODE and status.ErrorComment
    with ingestor.sessions() as session:
        for table in (Study, Series, Instance):
            assert session.scalar(select(func.count()).select_from(table)) == 0
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]


def garbage_file(path: Path, dataset_bytes: bytes) -> Path:
    """A Part 10 file whose file meta is valid (so an SCU can send it) and whose dataset is ``dataset_bytes``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + dataset_bytes)
    return path


def send_raw(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    """C-STORE the file's dataset bytes as they are (no decoding on the SCU side)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = scu_associate(port, UltrasoundImageStorage)
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        status: Dataset = assoc.send_c_store(path)  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    return status


#: SOP Instance UID (0008,0018) with the VR "XX": pydicom cannot decode it.
UNKNOWN_VR = b"\x08\x00\x18\x00XX\x10\x00" + b"1.2.3.4.5.6.7.8."


def test_undecodable_dataset_over_network_is_0xC210(
    start: StartListener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = start()
    status = send_raw(listener.port, garbage_file(tmp_path / "bad.dcm", UNKNOWN_VR), monkeypatch)
    assert listener.counts() == (0, 0, 0)
    assert status.Status == CANNOT_DECODE


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_garbage_dataset_over_network_is_refused(
    start: StartListener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random bytes as the dataset: pydicom reads them leniently (no UIDs found), so the status
    is a refusal, 0xA900 (0xC210 would be as right; change the test if the listener moves to it),
    never success, and nothing is stored."""
    listener = start()
    status = send_raw(listener.port, garbage_file(tmp_path / "bad.dcm", b"garbage, not a dataset" * 8), monkeypatch)
    assert status.Status == DATASET_MISMATCH
    assert status.ErrorComment.startswith("DICOM instance lacks StudyInstanceUID, SeriesInstanceUID"), status
    assert listener.counts() == (0, 0, 0)
    assert not [p for p in (listener.settings.home / "blobs").rglob("*") if p.is_file()]


class BrokenDiskBlobs(FileBlobStore):
    def put(self, data: bytes, durable: bool = True) -> str:
        raise OSError(28, "No space left on device")


def test_storage_failure_is_0xA700(start: StartListener, tmp_path: Path) -> None:
    listener = start(blobs=BrokenDiskBlobs(tmp_path / "broken-blobs"))
    assoc = scu_associate(listener.port, ComputedRadiographyImageStorage)
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        status = assoc.send_c_store(synthetic("CR"))  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status.Status == OUT_OF_RESOURCES
    assert listener.counts() == (0, 0, 0)
    r = storescu(listener.port, write(synthetic("CR"), tmp_path / "cr.dcm"))
    # DCMTK's storescu exits with the high byte of a failure status: 0xA7 for 0xA700
    assert r.returncode == 0xA7, r.stdout + r.stderr
    assert listener.counts() == (0, 0, 0)


def test_concurrent_senders_of_one_study(start: StartListener, tmp_path: Path) -> None:
    listener = start()
    study_uid, series_uid = generate_uid(), generate_uid()
    batches = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        batches.append(
            [write(synthetic("CR", study_uid=study_uid, series_uid=series_uid), folder / f"{i}.dcm") for i in range(5)]
        )
    cmds = [
        [dcmtk("storescu"), "-aet", f"SENDER{k}", "-aec", AE_TITLE, HOST, str(listener.port), *map(str, files)]
        for k, files in enumerate(batches)
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd in cmds]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert listener.counts() == (1, 1, 20)
    with listener.ingestor.sessions() as session:
        uids = set(session.scalars(select(Instance.sop_instance_uid)))
    assert uids == {str(pydicom.dcmread(f).SOPInstanceUID) for batch in batches for f in batch}


def test_an_instance_over_the_size_limit_is_refused_with_0xA700_and_not_stored(
    start: StartListener, tmp_path: Path
) -> None:
    listener = start(limit=20_000)
    small = write(synthetic("CR", size=64), tmp_path / "small.dcm")  # ~4 kB
    big = write(synthetic("CR", size=256), tmp_path / "big.dcm")  # ~66 kB
    assert storescu(listener.port, small).returncode == 0
    refused = storescu(listener.port, big)
    assert refused.returncode == 0xA7, refused.stdout + refused.stderr  # 0xA700, out of resources
    assert listener.counts() == (1, 1, 1)
