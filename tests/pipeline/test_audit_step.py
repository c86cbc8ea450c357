"""The audit step: it signs a checkpoint when the chain grew (and none when it did not), and streams
the records written since the process started to a syslog collector over UDP, resending from the
last one sent when the collector could not be reached."""

from __future__ import annotations

import socket
from pathlib import Path

from prescreen.config import Settings
from prescreen.pipeline.audit import AuditStep
from prescreen.pipeline.runtime import open_store
from prescreen.security.audit import Actor, AuditEntry, AuditEvent
from prescreen.security.keys import audit_public_key
from prescreen.store.audit import checkpoints, record_now, verify


def _entry(n: int) -> AuditEntry:
    return AuditEntry(AuditEvent.SIGN_IN, Actor.system(), object_id=f"s{n}")


def test_checkpoints_are_signed_only_when_the_chain_grew(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = open_store(settings)
    step = AuditStep(store.sessions, settings)
    step.run_once()  # nothing to sign yet
    with store.sessions() as session:
        assert checkpoints(session) == []
    record_now(store.sessions, _entry(1))
    step.run_once()
    step.run_once()
    with store.sessions() as session:
        assert [c.seq for c in checkpoints(session)] == [1]
    assert verify(store.sessions, audit_public_key(settings)).checkpoints == 1


def test_records_stream_to_syslog_over_udp(tmp_path: Path) -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    settings = Settings(home=tmp_path, audit_syslog=f"127.0.0.1:{collector.getsockname()[1]}")
    store = open_store(settings)
    record_now(store.sessions, _entry(0))  # written before the step started: not streamed by this process
    step = AuditStep(store.sessions, settings)
    step.run_once()
    for n in (1, 2):
        record_now(store.sessions, _entry(n))
    step.run_once()
    lines = [collector.recv(65536).decode() for _ in range(2)]
    assert [line.split('seq="')[1].split('"')[0] for line in lines] == ["2", "3"]
    assert all(line.startswith("<85>1 ") and "DICOM+RFC3881" in line and "<AuditMessage>" in line for line in lines)
    collector.close()
