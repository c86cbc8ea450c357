"""Group commit under a kill: four senders store instances concurrently into a real ``prescreen
serve`` (group commit on, the default); the whole server is SIGKILLed while they send. Every
instance that got a success status before the kill is in the database, with its blob, after it; the
new process screens them."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]
from sqlalchemy import create_engine, text

from tests.e2e.test_ingest_served import (
    AE_TITLE,
    FINAL,
    child_subreaper,
    instance,
    reap,
    start_server,
    wait_for_uid,
)
from tests.peers import require_peer

pytestmark = [pytest.mark.e2e]

SENDERS = 4
KILL_AFTER = 60  # acknowledged instances, all senders together


def test_sigkill_during_concurrent_sends_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    require_peer("Linux (/proc, prctl)", sys.platform.startswith("linux"), "CI runs on Linux")
    home, log = tmp_path / "home", tmp_path / "server.log"
    files = [[instance("CR", tmp_path, seed=1000 * s + k)[0] for k in range(40)] for s in range(SENDERS)]
    acknowledged: list[tuple[str, str]] = []  # (study UID, SOP instance UID) with status 0x0000
    lock = threading.Lock()
    enough = threading.Event()

    with child_subreaper():
        server = start_server(home, log)

        def sender(paths: list[Path]) -> None:
            ae = AE(ae_title="CLINIC")
            ae.add_requested_context(ComputedRadiographyImageStorage)
            assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=AE_TITLE)
            if not assoc.is_established:
                return
            try:
                for path in paths:
                    ds = pydicom.dcmread(path)
                    status = assoc.send_c_store(ds)
                    if not status or status.Status != 0x0000:
                        return  # the server is gone
                    with lock:
                        acknowledged.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
                        if len(acknowledged) >= KILL_AFTER:
                            enough.set()
            except Exception:
                return  # the association died with the server
            finally:
                if assoc.is_established:
                    assoc.abort()

        threads = [threading.Thread(target=sender, args=(paths,)) for paths in files]
        for thread in threads:
            thread.start()
        enough.wait(timeout=180)
        killed = server.kill()  # while the senders are still sending
        reap(killed)
        for thread in threads:
            thread.join(timeout=60)
    with lock:
        acked = list(acknowledged)
    assert len(acked) >= KILL_AFTER and len(acked) < SENDERS * 40, len(acked)  # killed mid-load

    engine = create_engine(f"sqlite:///{home / 'prescreen.db'}")
    try:
        with engine.connect() as db:
            rows = db.execute(text("SELECT sop_instance_uid, blob_key FROM instances")).all()
    finally:
        engine.dispose()
    stored = {uid: key for uid, key in rows}
    missing = [sop for _, sop in acked if sop not in stored]
    assert not missing, f"{len(missing)} acknowledged instances lost"
    blobs = home / "blobs"
    assert all((blobs / key[:2] / key[2:4] / key).is_file() for key in stored.values())

    second = start_server(home, log)
    try:
        deadline = time.monotonic() + 120
        for study_uid, _ in acked[:: max(1, len(acked) // 8)]:  # a sample: the new process screens them
            item = wait_for_uid(second, study_uid, FINAL, timeout=max(1.0, deadline - time.monotonic()))
            assert item["status"] == "screened", item
    finally:
        second.stop()
