"""Continuous capture between backups (``PRESCREEN_REPLICA_DIR``): nothing acknowledged after the last
backup set is lost with the home's disk. A real Litestream streams the SQLite database; blobs and the
keyring are written to the replica before they are acknowledged. The drill: a full backup, more work,
the replicator killed outright (the machine dies), the home destroyed, a restore from the backup and
the replica brings back every study, blob, report, signature and audit record, and the chain
verifies; ``--at`` brings back the state of a moment between."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from prescreen.config import Settings
from prescreen.errors import InvalidRequestError
from prescreen.pipeline.replication import ReplicationStep, Replicator, start_replication, stop_stray
from prescreen.pipeline.runtime import open_store
from prescreen.security.keys import audit_public_key, audit_signer
from prescreen.store.audit import sign_checkpoint, verify
from prescreen.store.backup import restore, take_backup
from prescreen.store.blobs import FileBlobStore
from prescreen.store.replica import has_database, litestream_config, restore_database
from tests.store.test_backup import (
    _add_study,
    cheap_password_hashing,  # noqa: F401  (autouse fixture)
    dispose,
    forget_keyrings,
    own_keyrings,  # noqa: F401  (autouse fixture)
    state_of,
    use_home,
)
from tests.store.test_worklist import reader

SYNC = 0.2


def replica_env(monkeypatch: pytest.MonkeyPatch, replica: Path | None) -> None:
    """Set (or, for the restored home, clear) ``PRESCREEN_REPLICA_DIR`` before ``use_home``."""
    if replica is None:
        monkeypatch.delenv("PRESCREEN_REPLICA_DIR", raising=False)
        return
    monkeypatch.setenv("PRESCREEN_REPLICA_DIR", str(replica))
    monkeypatch.setenv("PRESCREEN_REPLICA_SYNC_SECONDS", str(SYNC))


COUNTED = ("studies", "instances", "reports", "signatures", "audit_events", "audit_checkpoints")


def counts(database: Path) -> tuple[int, ...]:
    with sqlite3.connect(database) as conn:
        return tuple(int(conn.execute(f"select count(*) from {table}").fetchone()[0]) for table in COUNTED)


def shipped_counts(replica: Path, scratch: Path) -> tuple[int, ...] | None:
    """The row counts of the newest state streamed to ``replica``; None before the first sync."""
    if not has_database(replica):
        return None
    target = scratch / "probe.db"
    try:
        restore_database(replica, target)
    except InvalidRequestError:
        return None  # nothing complete shipped yet
    return counts(target)


def wait_shipped(replicator: Replicator, replica: Path, scratch: Path, live: Path) -> None:
    """Wait until the replica's newest state holds as many rows as the live database: Litestream
    ships every ``SYNC`` seconds, later on a loaded machine, and a disaster would not wait for it."""
    scratch.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 60
    while (found := shipped_counts(replica, scratch)) != (expected := counts(live)):
        assert replicator.alive
        assert time.monotonic() < deadline, f"after 60 s the replica holds {found} rows of {COUNTED}, not {expected}"
        time.sleep(SYNC)


def next_whole_second() -> datetime:
    """Sleep into the next second and return it: ``restore --at`` has second resolution, so a moment
    between two shipped states must be a whole second after the first one."""
    time.sleep(1.05 - (time.time() % 1.0))
    return datetime.now(UTC).replace(microsecond=0)


def test_nothing_acknowledged_after_the_last_backup_is_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = tmp_path / "vault" / "master.key"
    replica = tmp_path / "other-disk" / "replica"
    replica_env(monkeypatch, replica)
    settings = use_home(monkeypatch, tmp_path / "home", master)
    assert settings.replica_dir == replica
    ingestor = open_store(settings)
    replicator = start_replication(settings)
    assert replicator is not None and replicator.alive
    live = replicator.database
    try:
        ann = reader(ingestor.sessions, "ann.attending", "attending")
        cy = reader(ingestor.sessions, "cy.assoc", "associate_chief")
        _add_study(ingestor, ann, cy, 0)
        take_backup(settings, ingestor.sessions, tmp_path / "backups", "full")
        _add_study(ingestor, ann, cy, 1)  # after the backup: only the replica has it
        wait_shipped(replicator, replica, tmp_path / "probe", live)
        between = next_whole_second()
        time.sleep(1.1)  # the third study is shipped in a later second than ``between``
        _add_study(ingestor, ann, cy, 2)
        ingestor.store_upload({"rec.hea": b"rec 1 500 5000\n", "rec.dat": b"\x00\x01" * 64}, patient_name="赵六")
        assert sign_checkpoint(ingestor.sessions, audit_signer(settings)) is not None
        wait_shipped(replicator, replica, tmp_path / "probe", live)
        before = state_of(ingestor)
    finally:
        dispose(ingestor)
        if replicator.process is not None:
            replicator.process.send_signal(signal.SIGKILL)  # the machine dies: no last sync
            replicator.process.wait()
    assert len(before["studies"]) == 4
    assert (replica / "blobs").is_dir() and (replica / "keys" / "keyring.json").is_file() and has_database(replica)

    shutil.rmtree(tmp_path / "home")  # the home's disk is lost
    forget_keyrings(monkeypatch)
    replica_env(monkeypatch, None)
    restored = use_home(monkeypatch, tmp_path / "home", master)
    done, brought = restore(restored, tmp_path / "backups", replica=replica)
    assert done.kind == "full" and brought["database"] is True and int(brought["blobs"]) > 0
    ingestor = open_store(restored)
    try:
        after = state_of(ingestor)
        for part in ("studies", "instances", "blob_files", "blobs", "reports", "signatures", "signing_keys", "audit"):
            assert after[part] == before[part], part
        verdict = verify(ingestor.sessions, audit_public_key(restored))
        assert verdict.ok, verdict.reason
    finally:
        dispose(ingestor)

    # point in time: the state between the second and the third study
    shutil.rmtree(tmp_path / "home")
    forget_keyrings(monkeypatch)
    earlier = use_home(monkeypatch, tmp_path / "home", master)
    restore(earlier, tmp_path / "backups", at=between, replica=replica)
    ingestor = open_store(earlier)
    try:
        assert len(state_of(ingestor)["studies"]) == 2
        assert verify(ingestor.sessions, audit_public_key(earlier)).ok
    finally:
        dispose(ingestor)


def test_a_blob_is_in_the_replica_before_it_is_acknowledged(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "home" / "blobs", mirror=tmp_path / "replica" / "blobs")
    key = store.put(b"a DICOM instance")
    assert FileBlobStore(tmp_path / "replica" / "blobs").get(key) == b"a DICOM instance"
    assert FileBlobStore(tmp_path / "home" / "blobs").get(key) == b"a DICOM instance"


def test_a_died_replicator_is_restarted_and_a_stray_one_stopped(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", replica_dir=tmp_path / "replica", replica_sync_seconds=SYNC)
    database = tmp_path / "home" / "app.db"
    database.parent.mkdir(parents=True)
    with sqlite3.connect(database) as conn:
        conn.execute("pragma journal_mode=wal")
        conn.execute("create table t (x)")
    first = Replicator(settings, database).start()
    second = Replicator(settings, database)
    try:
        assert first.alive
        assert stop_stray(second.pid_file, second.config) is True  # as a new service start would
        assert first.process is not None and first.process.wait(10) is not None
        step = ReplicationStep(second)
        assert step.run_once() is True and second.alive  # not running: started
        assert step.run_once() is False  # running: left alone
    finally:
        second.stop()
        first.stop()
    assert stop_stray(second.pid_file, second.config) is False  # gone: nothing to stop


def test_a_replica_without_a_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="no streamed database"):
        restore_database(tmp_path / "empty", tmp_path / "out.db")


def test_the_litestream_configuration_names_the_database_and_the_file_replica(tmp_path: Path) -> None:
    text = litestream_config(tmp_path / "home" / "prescreen.db", tmp_path / "replica", 0.5)
    assert f"path: {(tmp_path / 'home' / 'prescreen.db').resolve()}" in text
    assert "type: file" in text and f"path: {(tmp_path / 'replica' / 'db').resolve()}" in text
    assert "sync-interval: 0.5s" in text
