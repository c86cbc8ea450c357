"""Group commit (``prescreen.store.group_commit``): concurrent senders' instances are made durable
together (blobs synced, then one transaction) and each sender is answered only after that; one bad
instance in a group refuses only itself; duplicates are stored once."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import MissingIdentifierError
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.group_commit import GroupCommit
from prescreen.store.ingest import InstanceMeta, Received, dicom_meta
from prescreen.store.schema import Instance, Study
from tests.fixtures_dicom import make_instance


def encoded(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class RecordingBlobs(FileBlobStore):
    """A folder store that notes when its writes became durable, and what was unsynced then."""

    def __init__(self, root: Path, timeline: list[str]) -> None:
        super().__init__(root)
        self.timeline = timeline

    def sync(self) -> None:
        with self._unsynced_lock:
            pending = len(self._unsynced)
        super().sync()
        self.timeline.append(f"sync {pending}")


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    migrate(database_url)
    return session_factory(make_engine(database_url))


def instances(n: int, study_uid: str | None = None) -> list[tuple[bytes, InstanceMeta]]:
    out = []
    for _ in range(n):
        data = encoded(make_instance("CR", study_uid=study_uid or generate_uid()))
        out.append((data, dicom_meta(data, sender="CLINIC")))
    return out


def count(sessions: sessionmaker[Session], table: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_concurrent_senders_are_answered_after_one_sync_and_one_commit_per_group(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    timeline: list[str] = []
    blobs = RecordingBlobs(tmp_path / "blobs", timeline)
    event.listen(sessions.kw["bind"], "commit", lambda _conn: timeline.append("commit"))
    group = GroupCommit(sessions, blobs)
    answered: list[Received] = []
    lock = threading.Lock()

    def sender(items: list[tuple[bytes, InstanceMeta]]) -> None:
        for data, meta in items:
            received = group.store(data, meta)
            # when a sender hears back, its row is committed (another connection sees it) and its blob
            # is no longer waiting for a sync
            with sessions() as session:
                found = session.scalars(select(Instance).where(Instance.sop_instance_uid == meta.sop_instance_uid))
                row = found.one()
            with blobs._unsynced_lock:
                assert not any(path.name == row.blob_key for path in blobs._unsynced)
            assert (blobs.root / row.blob_key[:2] / row.blob_key[2:4] / row.blob_key).is_file()
            with lock:
                answered.append(received)

    work = [instances(10) for _ in range(8)]
    threads = [threading.Thread(target=sender, args=(items,)) for items in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answered) == 80 and count(sessions, Instance) == 80 and count(sessions, Study) == 80
    assert group.stats.instances == 80 and group.stats.fallbacks == 0
    assert group.stats.groups < 80 and group.stats.largest > 1, group.stats  # senders shared groups
    syncs = [entry for entry in timeline if entry.startswith("sync")]
    assert len(syncs) == group.stats.groups
    assert sum(int(entry.split()[1]) for entry in syncs) == 80  # every blob written unsynced, then synced
    groups = [entry for entry in timeline if entry.startswith("sync") or entry == "commit"]
    assert len(groups) == 2 * group.stats.groups  # each group: its blobs synced, then its rows committed
    assert all(a.startswith("sync") and b == "commit" for a, b in zip(groups[::2], groups[1::2], strict=True))
    assert all(blobs.exists(key) for key in _keys(sessions))


def test_one_bad_instance_refuses_only_itself(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    group = GroupCommit(sessions, FileBlobStore(tmp_path / "blobs"))
    study_a, study_b = generate_uid(), generate_uid()
    good = instances(3, study_a)
    series = good[0][1].series_uid
    clash = make_instance("CR", study_uid=study_b, series_uid=series)  # its series belongs to study A
    clash_data = encoded(clash)
    items = [(data, meta, None) for data, meta in good]
    items.insert(2, (clash_data, dicom_meta(clash_data), None))
    outcomes = group.store_many(items)
    assert isinstance(outcomes[2], MissingIdentifierError)
    assert all(isinstance(outcome, Received) for k, outcome in enumerate(outcomes) if k != 2)
    assert count(sessions, Instance) == 3 and group.stats.fallbacks == 1


def test_a_duplicate_in_the_same_group_is_stored_once(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    group = GroupCommit(sessions, FileBlobStore(tmp_path / "blobs"))
    (data, meta), *_ = instances(1)
    first, second = group.store_many([(data, meta, None), (data, meta, None)])
    assert isinstance(first, Received) and isinstance(second, Received)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert count(sessions, Instance) == 1


def test_an_unwritable_blob_store_fails_every_sender_of_the_group(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    class Full(FileBlobStore):
        def put(self, data: bytes, durable: bool = True) -> str:
            raise OSError(28, "No space left on device")

    group = GroupCommit(sessions, Full(tmp_path / "blobs"))
    outcomes = group.store_many([(data, meta, None) for data, meta in instances(3)])
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    assert count(sessions, Instance) == 0


def _keys(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Instance.blob_key)))


def test_an_idle_committer_ends_and_the_next_instance_starts_another(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prescreen.store import group_commit

    monkeypatch.setattr(group_commit, "IDLE_SECONDS", 0.05)
    group = GroupCommit(sessions, FileBlobStore(tmp_path / "blobs"))
    (first, meta_1), (second, meta_2) = instances(2)
    group.store(first, meta_1)
    thread = group._thread
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive() and group._thread is None  # nothing holds the store alive
    assert not group.store(second, meta_2).duplicate and count(sessions, Instance) == 2
