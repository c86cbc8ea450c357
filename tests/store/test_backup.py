"""Backups that restore (``prescreen.store.backup``): a restore drill. A home with sealed blobs,
sealed patient fields, signed reports and a signed audit chain is backed up (a full set, more work,
an incremental set) and restored into an empty home with the same master key, on SQLite and on
PostgreSQL (into a freshly created empty database); everything compares equal and the audit chain
verifies. ``--at`` restores an earlier set; ``verify_backups`` catches a changed byte, a missing
file and a changed manifest; a non-empty home and a wrong master key are refused."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, make_url, select
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings, get_settings
from prescreen.errors import InvalidRequestError, KeyFileError
from prescreen.pipeline.runtime import open_store
from prescreen.security import envelope
from prescreen.security import keyring as keyring_module
from prescreen.security.keyring import KEYRING_FILE, keyring_for
from prescreen.security.keys import audit_public_key, audit_signer
from prescreen.security.sm import sm3_hex
from prescreen.store import users as users_module
from prescreen.store.audit import sign_checkpoint, verify
from prescreen.store.backup import (
    CHUNKED_MAGIC,
    DATABASE,
    MANIFEST,
    Problem,
    list_sets,
    restore,
    take_backup,
    verify_backups,
)
from prescreen.store.ingest import Ingestor
from prescreen.store.schema import Instance, Study
from prescreen.store.schema_security import AuditCheckpoint, AuditHead, SigningKey
from prescreen.store.schema_security import AuditEvent as AuditRow
from prescreen.store.schema_triage import Report, Signature
from prescreen.store.signing import verify_study
from prescreen.store.users import Principal
from tests.store.test_worklist import ecg, finalize, one_item, reader, screen_study, triage

Sessions = sessionmaker[Session]
NAMES = ["张三丰", "李四", "王五"]


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(autouse=True)
def own_keyrings(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's keyrings only, so that ``open_sealed_any`` cannot fall back on a keyring another
    test (or the home before the restore) left loaded in this process."""
    monkeypatch.setattr(keyring_module, "_KEYRINGS", {})


def use_home(monkeypatch: pytest.MonkeyPatch, home: Path, master: Path, url: str | None = None) -> Settings:
    """Point the process at ``home`` (some code reads ``get_settings()``) and return its settings."""
    monkeypatch.setenv("PRESCREEN_HOME", str(home))
    monkeypatch.setenv("PRESCREEN_MASTER_KEY_FILE", str(master))
    if url is None:
        monkeypatch.delenv("PRESCREEN_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("PRESCREEN_DATABASE_URL", url)
    get_settings.cache_clear()
    return Settings(home=home, master_key_file=master, database_url=url)


def forget_keyrings(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a new process would: no keyring loaded (the restored home must open with its own)."""
    monkeypatch.setattr(keyring_module, "_KEYRINGS", {})


def dispose(ingestor: Ingestor) -> None:
    ingestor.sessions.kw["bind"].dispose()


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def new_database(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A maker of fresh, empty PostgreSQL databases on the session's server (dropped afterwards)."""
    made: list[str] = []
    admin = ""

    def make() -> str:
        nonlocal admin
        server = str(request.getfixturevalue("postgres_server"))
        admin = _libpq(server)
        name = f"t_{uuid.uuid4().hex}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return make_url(server).set(drivername="postgresql+psycopg", database=name).render_as_string(False)

    yield make
    for name in made:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- the home being backed up


@dataclass
class Drill:
    settings: Settings
    master: Path
    backups: Path
    full_state: dict[str, Any]
    incremental_state: dict[str, Any]
    between: datetime
    study_uids: list[str]


def _add_study(ingestor: Ingestor, ann: Principal, cy: Principal, index: int) -> str:
    """A screened ECG study with a patient name, routed, reported and co-signed; its UID."""
    study_id = screen_study(ingestor.sessions, ingestor.blobs, ecg("af", 0.9 + index / 100))
    with ingestor.sessions.begin() as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.patient_name = NAMES[index % len(NAMES)]
        uid = study.study_uid
    assert triage(ingestor.sessions) == 1
    finalize(ingestor.sessions, one_item(ingestor.sessions, study_id).id, ann, cy, text=f"AF #{index}; 房颤。")
    return uid


def state_of(ingestor: Ingestor) -> dict[str, Any]:
    """Everything a restore must bring back, decrypted where it is sealed."""
    with ingestor.sessions() as s:
        studies = sorted((x.study_uid, x.patient_name, x.patient_id, x.status) for x in s.scalars(select(Study)))
        instances = sorted(
            (x.sop_instance_uid, x.blob_key, x.size_bytes, x.file_name) for x in s.scalars(select(Instance))
        )
        reports = sorted((x.item_id, x.version, x.status, x.text, x.physician_label) for x in s.scalars(select(Report)))
        signatures = sorted(
            (x.report_id, x.user_id, x.kind, x.text_sha256, x.canonical, x.sm2_signature, x.key_id)
            for x in s.scalars(select(Signature))
        )
        keys = sorted((x.user_id, x.key_id, x.public_pem, x.sealed_private) for x in s.scalars(select(SigningKey)))
        head = s.get(AuditHead, 1)
        last = s.scalars(select(AuditRow).order_by(AuditRow.seq.desc())).first()
        audit = (
            int(s.scalar(select(func.count()).select_from(AuditRow)) or 0),
            head.seq if head else 0,
            head.hash if head else None,
            last.hash if last else None,
            int(s.scalar(select(func.count()).select_from(AuditCheckpoint)) or 0),
        )
    stored = ingestor.blobs.files.stored_keys()  # type: ignore[attr-defined]
    return {
        "studies": studies,
        "instances": instances,
        "blob_files": stored,
        "blobs": {key: ingestor.blobs.get(key) for key in stored},
        "reports": reports,
        "signatures": signatures,
        "signing_keys": keys,
        "audit": audit,
    }


def make_drill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str | None = None) -> Drill:
    master = tmp_path / "vault" / "master.key"  # apart from the home and the backups
    settings = use_home(monkeypatch, tmp_path / "home", master, url)
    ingestor = open_store(settings)
    try:
        ann = reader(ingestor.sessions, "ann.attending", "attending")
        cy = reader(ingestor.sessions, "cy.assoc", "associate_chief")
        uids = [_add_study(ingestor, ann, cy, i) for i in range(2)]
        assert sign_checkpoint(ingestor.sessions, audit_signer(settings)) is not None  # as the service does
        backups = tmp_path / "backups"
        full = take_backup(settings, ingestor.sessions, backups, "full")
        full_state = state_of(ingestor)
        between = datetime.now(UTC)
        assert datetime.fromisoformat(full.created) < between
        uids.append(_add_study(ingestor, ann, cy, 2))
        ingestor.store_upload({"rec.hea": b"rec 1 500 5000\n", "rec.dat": b"\x00\x01" * 64}, patient_name="赵六")
        assert sign_checkpoint(ingestor.sessions, audit_signer(settings)) is not None
        incremental = take_backup(settings, ingestor.sessions, backups, "incremental")
        assert datetime.fromisoformat(incremental.created) > between
        incremental_state = state_of(ingestor)
    finally:
        dispose(ingestor)
    assert (len(full_state["studies"]), len(incremental_state["studies"])) == (2, 4)
    assert len(incremental_state["blob_files"]) > len(full_state["blob_files"])
    return Drill(settings, master, backups, full_state, incremental_state, between, uids)


@pytest.fixture
def drill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Drill:
    """A SQLite home, backed up: a full set, then more work and an incremental set."""
    return make_drill(tmp_path, monkeypatch)


def restore_into(
    drill: Drill, monkeypatch: pytest.MonkeyPatch, home: Path, at: datetime | None = None, url: str | None = None
) -> tuple[Settings, Ingestor]:
    forget_keyrings(monkeypatch)
    settings = use_home(monkeypatch, home, drill.master, url)
    restore(settings, drill.backups, at)
    return settings, open_store(settings)


# --------------------------------------------------------------------------- the drill


def _check_restored(drill: Drill, settings: Settings, ingestor: Ingestor, expected: dict[str, Any]) -> None:
    got = state_of(ingestor)
    for part in expected:
        assert got[part] == expected[part], part
    assert any(name == "张三丰" for _, name, _, _ in got["studies"])
    verdict = verify(ingestor.sessions, audit_public_key(settings))
    assert verdict.ok, verdict.reason
    assert verdict.records == expected["audit"][0] and verdict.checkpoints == expected["audit"][4] >= 1
    with ingestor.sessions() as session:
        for uid, *_ in expected["studies"]:
            checks = verify_study(session, uid)
            assert all(c.ok for c in checks), checks
        assert sum(len(verify_study(session, uid)) for uid, *_ in expected["studies"]) == 2 * len(expected["reports"])
        # the physicians' sealed private keys open with the restored keyring
        ring = keyring_for(settings)
        for row in session.scalars(select(SigningKey)):
            pem = ring.open(envelope_bytes(row.sealed_private), f"prescreen-sm2:{row.user_id}".encode())
            assert b"PRIVATE KEY" in pem


def envelope_bytes(b64: str) -> bytes:
    data = base64.b64decode(b64)
    assert envelope.is_sealed(data)
    return data


def test_backups_verify_and_incrementals_hold_only_new_blobs(drill: Drill) -> None:
    checked, problems = verify_backups(drill.backups)
    assert problems == []
    full, incremental = list_sets(drill.backups)
    assert (full.kind, incremental.kind, incremental.parent, full.parent) == ("full", "incremental", full.name, None)
    assert checked == len(full.files) + len(incremental.files)
    full_blobs = {n.split("/", 1)[1] for n in full.files if n.startswith("blobs/")}
    new_blobs = {n.split("/", 1)[1] for n in incremental.files if n.startswith("blobs/")}
    assert full_blobs == set(drill.full_state["blob_files"])
    assert new_blobs == set(drill.incremental_state["blob_files"]) - full_blobs and new_blobs
    assert (full.detail["studies"], incremental.detail["studies"]) == (2, 4)
    assert incremental.detail["audit_hash"] == drill.incremental_state["audit"][2]
    for item in (full, incremental):
        sealed = (item.path / DATABASE).read_bytes()
        assert sealed.startswith(CHUNKED_MAGIC) and envelope.is_sealed(sealed[len(CHUNKED_MAGIC) + 8 :])
        assert b"SQLite format 3" not in sealed and "张三丰".encode() not in sealed
        for name in item.files:
            if name.startswith("blobs/"):
                assert envelope.is_sealed((item.path / name).read_bytes())  # copied sealed, as at rest
        assert not (item.path / "keys" / "master.key").exists()
        assert drill.master.read_bytes() not in b"".join(p.read_bytes() for p in item.path.rglob("*") if p.is_file())


def test_an_incremental_without_a_full_set_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = use_home(monkeypatch, tmp_path / "home", tmp_path / "vault" / "master.key")
    ingestor = open_store(settings)
    try:
        with pytest.raises(InvalidRequestError, match="full one first"):
            take_backup(settings, ingestor.sessions, tmp_path / "backups", "incremental")
        with pytest.raises(InvalidRequestError):
            take_backup(settings, ingestor.sessions, tmp_path / "backups", "differential")
    finally:
        dispose(ingestor)


def test_restore_drill_on_sqlite(drill: Drill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "restored"
    settings, ingestor = restore_into(drill, monkeypatch, home)
    try:
        _check_restored(drill, settings, ingestor, drill.incremental_state)
    finally:
        dispose(ingestor)


def test_restore_at_a_time_between_the_sets_gives_the_full_set(
    drill: Drill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, ingestor = restore_into(drill, monkeypatch, tmp_path / "restored", at=drill.between)
    try:
        _check_restored(drill, settings, ingestor, drill.full_state)
        assert drill.study_uids[2] not in {uid for uid, *_ in state_of(ingestor)["studies"]}
    finally:
        dispose(ingestor)
    forget_keyrings(monkeypatch)
    with pytest.raises(InvalidRequestError, match="no backup set"):
        restore(
            use_home(monkeypatch, tmp_path / "too-early", drill.master),
            drill.backups,
            datetime.now(UTC) - timedelta(days=1),
        )


def _copy(drill: Drill, tmp_path: Path, name: str) -> tuple[Path, list[Path]]:
    copy = tmp_path / name
    shutil.copytree(drill.backups, copy)
    return copy, [s.path for s in list_sets(copy)]


def test_verify_backups_detects_a_changed_blob_byte(drill: Drill, tmp_path: Path) -> None:
    copy, (full, _) = _copy(drill, tmp_path, "changed-blob")
    blob = sorted((full / "blobs").iterdir())[0]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    _, problems = verify_backups(copy)
    assert [(p.set_name, p.what) for p in problems] == [(full.name, f"blobs/{blob.name} does not match its SM3 hash")]
    with pytest.raises(InvalidRequestError, match="does not match"):
        restore(Settings(home=tmp_path / "nope", master_key_file=drill.master), copy)
    assert not (tmp_path / "nope").exists()


def test_verify_backups_detects_a_deleted_file(drill: Drill, tmp_path: Path) -> None:
    copy, (_, incremental) = _copy(drill, tmp_path, "deleted")
    (incremental / DATABASE).unlink()
    _, problems = verify_backups(copy)
    assert [(p.set_name, p.what) for p in problems] == [(incremental.name, f"{DATABASE} is missing")]


def test_verify_backups_detects_a_changed_manifest(drill: Drill, tmp_path: Path) -> None:
    copy, (full, _) = _copy(drill, tmp_path, "manifest")
    doc = json.loads((full / MANIFEST).read_text())
    doc["studies"] += 1
    (full / MANIFEST).write_text(json.dumps(doc, indent=1, sort_keys=True))
    _, problems = verify_backups(copy)
    assert [(p.set_name, p.what) for p in problems] == [(full.name, "the manifest's SM2 signature does not verify")]

    # a manifest that names another hash for a file it lists, with the file changed to match, too
    copy, (full, _) = _copy(drill, tmp_path, "manifest-and-file")
    (full / "keys" / KEYRING_FILE).write_text("{}")
    doc = json.loads((full / MANIFEST).read_text())
    doc["files"][f"keys/{KEYRING_FILE}"] = sm3_hex(b"{}")
    (full / MANIFEST).write_text(json.dumps(doc, indent=1, sort_keys=True))
    _, problems = verify_backups(copy)
    assert [(p.set_name, p.what) for p in problems] == [(full.name, "the manifest's SM2 signature does not verify")]


def test_verify_backups_reports_a_garbled_manifest(drill: Drill, tmp_path: Path) -> None:
    copy, (full, incremental) = _copy(drill, tmp_path, "garbled")
    (full / MANIFEST).write_bytes((full / MANIFEST).read_bytes()[:40])
    _, problems = verify_backups(copy)
    assert problems[0] == Problem(full.name, "its manifest.json does not parse")
    assert {p.set_name for p in problems[1:]} <= {incremental.name}  # its incremental's chain is broken too


def test_restore_into_a_home_that_is_not_empty_is_refused(drill: Drill, tmp_path: Path) -> None:
    home = tmp_path / "busy"
    home.mkdir()
    (home / "something").write_text("x")
    with pytest.raises(InvalidRequestError, match="not empty"):
        restore(Settings(home=home, master_key_file=drill.master), drill.backups)
    assert sorted(p.name for p in home.iterdir()) == ["something"]
    with pytest.raises(InvalidRequestError, match="not empty"):  # nor over the home it came from
        restore(drill.settings, drill.backups)


def test_restore_without_the_right_master_key_fails_and_leaves_no_half_home(
    drill: Drill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_keyrings(monkeypatch)
    wrong = tmp_path / "other-vault" / "master.key"
    wrong.parent.mkdir()
    wrong.write_text(envelope.new_key().hex())
    home = tmp_path / "restored"
    with pytest.raises(KeyFileError, match="is not the one that wrapped"):
        restore(use_home(monkeypatch, home, wrong), drill.backups)
    assert not home.exists()

    # no master key file at all: refused before anything is written (no key is made afresh)
    monkeypatch.delenv("PRESCREEN_MASTER_KEY_FILE")
    get_settings.cache_clear()
    with pytest.raises(InvalidRequestError, match="no master key"):
        restore(Settings(home=home), drill.backups)
    assert not home.exists()

    # an empty home that existed before: its contents are not left half restored
    home.mkdir()
    with pytest.raises(KeyFileError):
        restore(Settings(home=home, master_key_file=wrong), drill.backups)
    assert not home.exists() or list(home.iterdir()) == []

    # and the right key still restores it afterwards
    _, ingestor = restore_into(drill, monkeypatch, tmp_path / "restored-right")
    try:
        assert state_of(ingestor)["studies"] == drill.incremental_state["studies"]
    finally:
        dispose(ingestor)


def test_the_restored_service_key_is_the_one_that_signed_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = tmp_path / "vault" / "master.key"
    settings = use_home(monkeypatch, tmp_path / "home", master)
    ingestor = open_store(settings)
    try:
        ingestor.store_upload({"rec.dat": b"\x00\x01" * 64}, modality="ECG", patient_name="张三丰")
        made = take_backup(settings, ingestor.sessions, tmp_path / "backups", "full")
    finally:
        dispose(ingestor)
    forget_keyrings(monkeypatch)
    restored = use_home(monkeypatch, tmp_path / "restored", master)
    restore(restored, tmp_path / "backups")
    assert audit_public_key(restored) == (made.path / "service-sm2.pub.pem").read_text()


# --------------------------------------------------------------------------- the drill on PostgreSQL


def test_restore_drill_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_database: Any, postgres_database: str
) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("needs pg_dump and pg_restore")
    drill = make_drill(tmp_path, monkeypatch, url=postgres_database)
    assert verify_backups(drill.backups)[1] == []
    assert all(s.detail["database_url_kind"] == "postgresql" for s in list_sets(drill.backups))
    target = new_database()
    settings, ingestor = restore_into(drill, monkeypatch, tmp_path / "restored", url=target)
    try:
        _check_restored(drill, settings, ingestor, drill.incremental_state)
    finally:
        dispose(ingestor)

    earlier = new_database()
    settings, ingestor = restore_into(drill, monkeypatch, tmp_path / "restored-at", at=drill.between, url=earlier)
    try:
        _check_restored(drill, settings, ingestor, drill.full_state)
    finally:
        dispose(ingestor)


def test_a_sqlite_set_restored_into_postgresql_is_refused_and_leaves_no_half_home(
    drill: Drill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_database: Any
) -> None:
    target = new_database()
    forget_keyrings(monkeypatch)
    home = tmp_path / "restored"
    with pytest.raises(InvalidRequestError):
        restore(use_home(monkeypatch, home, drill.master, target), drill.backups)
    assert not home.exists() or list(home.iterdir()) == []


def test_a_postgresql_set_restored_into_sqlite_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database: str
) -> None:
    drill = make_drill(tmp_path, monkeypatch, url=postgres_database)
    forget_keyrings(monkeypatch)
    home = tmp_path / "restored"
    with pytest.raises(InvalidRequestError):
        restore(use_home(monkeypatch, home, drill.master), drill.backups)
    assert not home.exists() or list(home.iterdir()) == []


# --------------------------------------------------------------------------- the sealed snapshot, in chunks


def test_a_database_snapshot_is_sealed_and_opened_a_chunk_at_a_time(tmp_path: Path) -> None:
    from prescreen.store.backup import open_chunked, seal_chunked

    ring = keyring_for(Settings(home=tmp_path / "home", master_key_file=tmp_path / "vault" / "master.key"))
    for size in (0, 1, 999, 1000, 1001, 4500):  # empty, one partial chunk, exact multiples, several
        source, sealed, back = tmp_path / f"db-{size}", tmp_path / f"db-{size}.sm4", tmp_path / f"db-{size}.out"
        source.write_bytes(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
        seal_chunked(ring, source, sealed, chunk=1000)
        assert sealed.read_bytes().startswith(CHUNKED_MAGIC)
        assert size < 64 or source.read_bytes()[:64] not in sealed.read_bytes()
        open_chunked(ring, sealed, back)
        assert back.read_bytes() == source.read_bytes()

    sealed = tmp_path / "db-4500.sm4"
    whole = sealed.read_bytes()
    chunks, at = [], len(CHUNKED_MAGIC)
    while at < len(whole):
        length = int.from_bytes(whole[at : at + 8], "big")
        chunks.append(whole[at : at + 8 + length])
        at += 8 + length
    assert len(chunks) == 5
    for name, body in {
        "dropped last": chunks[:-1],
        "swapped": [chunks[1], chunks[0], *chunks[2:]],
        "repeated": [chunks[0], *chunks],
        "extra": [*chunks, chunks[0]],
    }.items():
        broken = tmp_path / f"broken-{name.replace(' ', '-')}"
        broken.write_bytes(CHUNKED_MAGIC + b"".join(body))
        with pytest.raises(InvalidRequestError):
            open_chunked(ring, broken, tmp_path / "out")


def test_a_snapshot_sealed_whole_by_an_earlier_version_still_opens(tmp_path: Path) -> None:
    from prescreen.store.backup import DB_AAD, open_chunked

    ring = keyring_for(Settings(home=tmp_path / "home", master_key_file=tmp_path / "vault" / "master.key"))
    (tmp_path / "old.sm4").write_bytes(ring.seal(b"SQLite format 3\x00 ...", DB_AAD))
    open_chunked(ring, tmp_path / "old.sm4", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"SQLite format 3\x00 ..."
