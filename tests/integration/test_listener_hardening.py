"""The listener against what a hostile network and old machines send: a wrong called AE title is
rejected (0x07), idle connections cannot hold the association slots, and the retired ultrasound
SOP classes old machines still send are stored."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from prescreen.config import Settings
from prescreen.integration.listener import (
    ULTRASOUND_IMAGE_STORAGE_RETIRED,
    ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED,
    start_listener,
)
from prescreen.pipeline.runtime import open_store
from prescreen.store.schema import Instance
from tests.integration.test_listener import AE_TITLE, HOST, free_port


@pytest.fixture
def listener(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(
        dicom_port=free_port(),
        dicom_ae_title=AE_TITLE,
        home=tmp_path,
        dicom_acse_timeout_seconds=1.0,
        dicom_max_associations=8,
    )
    ingestor = open_store(settings)
    server = start_listener(ingestor, settings, host=HOST)
    assert server is not None
    yield settings, ingestor
    server.shutdown()


def echo(port: int, called: str = AE_TITLE) -> tuple[bool, object]:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title=called)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established, assoc


def test_a_wrong_called_ae_title_is_rejected_with_reason_0x07(listener) -> None:  # type: ignore[no-untyped-def]
    settings, _ = listener
    ok, _ = echo(settings.dicom_port)
    assert ok
    established, assoc = echo(settings.dicom_port, called="WRONGAE")
    assert not established and assoc.is_rejected  # type: ignore[attr-defined]
    rejection = assoc.acceptor.primitive  # type: ignore[attr-defined]
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x07)


def test_idle_connections_do_not_lock_the_listener_out(listener) -> None:  # type: ignore[no-untyped-def]
    """More idle TCP connections than association slots, opened then closed: a well-behaved
    sender is served within a few ACSE timeouts (1 s here), not locked out."""
    settings, _ = listener
    idle = [socket.create_connection((HOST, settings.dicom_port)) for _ in range(settings.dicom_max_associations + 4)]
    time.sleep(0.5)
    for conn in idle:
        conn.close()
    deadline = time.monotonic() + 10
    while not echo(settings.dicom_port)[0]:
        assert time.monotonic() < deadline, "no association within 10 s after the idle connections closed"
        time.sleep(0.5)


def test_idle_connections_held_open_are_dropped_after_the_acse_timeout(listener) -> None:  # type: ignore[no-untyped-def]
    settings, _ = listener
    idle = [socket.create_connection((HOST, settings.dicom_port)) for _ in range(settings.dicom_max_associations)]
    try:
        deadline = time.monotonic() + 10
        while not echo(settings.dicom_port)[0]:  # the silent ones are closed after 1 s
            assert time.monotonic() < deadline, "idle connections kept every slot for 10 s"
            time.sleep(0.5)
    finally:
        for conn in idle:
            conn.close()


@pytest.mark.parametrize("sop_class", [ULTRASOUND_IMAGE_STORAGE_RETIRED, ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED])
@pytest.mark.data
def test_retired_ultrasound_sop_classes_are_stored(listener, shared_data: Path, sop_class: str) -> None:  # type: ignore[no-untyped-def]
    """``color-pl.dcm`` is a real Ultrasound Image Storage (retired) instance. DCMTK's storescu
    proposes retired classes only with ``-R``; pynetdicom here proposes exactly the file's class."""
    settings, ingestor = listener
    ds = pydicom.dcmread(str(shared_data / "dicom" / "color-pl.dcm"))
    ds.SOPClassUID = sop_class
    ae = AE(ae_title="OLDUS")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, settings.dicom_port, ae_title=AE_TITLE)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    with ingestor.sessions() as session:
        stored = session.query(Instance).one()
    assert (stored.sop_instance_uid, stored.sop_class_uid) == (ds.SOPInstanceUID, sop_class)


def test_one_address_cannot_take_every_slot(tmp_path: Path) -> None:
    """With 4 connections per address, a fifth from the same host is closed at once, while another
    host (127.0.0.2, also loopback) still associates."""
    settings = Settings(
        dicom_port=free_port(),
        dicom_ae_title=AE_TITLE,
        home=tmp_path,
        dicom_acse_timeout_seconds=30.0,
        dicom_max_associations_per_address=4,
    )
    server = start_listener(open_store(settings), settings, host=HOST)
    assert server is not None
    idle = [socket.create_connection((HOST, settings.dicom_port)) for _ in range(4)]
    try:
        # the listener counts a connection once its thread has accepted it: under CI load that can
        # take more than half a second, so the extra connection is tried again until it is refused
        deadline = time.monotonic() + 20
        while True:
            time.sleep(0.5)
            extra = socket.create_connection((HOST, settings.dicom_port))
            extra.settimeout(5)
            try:
                refused = extra.recv(1) == b""  # closed by the listener without a word
            except TimeoutError:
                refused = False
            extra.close()
            if refused or time.monotonic() > deadline:
                break
        assert refused, "the listener kept admitting a fifth connection from one address"
        other = AE(ae_title="OTHERHOST")
        other.add_requested_context(Verification)
        assoc = other.associate(HOST, settings.dicom_port, ae_title=AE_TITLE, bind_address=("127.0.0.2", 0))
        assert assoc.is_established
        assoc.release()
    finally:
        for conn in idle:
            conn.close()
        server.shutdown()
