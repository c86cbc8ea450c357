"""Backups that restore: full and incremental sets, sealed (SM4-GCM) and listed in an SM3 manifest
that the service's SM2 key signs; verified by re-hashing; restored into an empty home.

A backup folder holds sets ``<UTC time>-full`` and ``<UTC time>-incremental``. Each set has:

* ``database.sm4``: the whole database at that moment (SQLite's online backup API, which copies a
  consistent snapshot while the service writes; PostgreSQL: ``pg_dump --format=custom``), sealed;
* ``blobs/``: the blob files not yet in an earlier set of its chain (blobs are content-addressed and
  never change, so an incremental set holds the new ones only); they are already sealed at rest and
  are copied as they are;
* ``keys/keyring.json``: the data keys, wrapped by the master key (the master key itself is never in
  a backup: keep it apart, a restore needs it);
* ``manifest.json``: kind, time, parent set, the SM3 of every file, the counts and the audit chain's
  head; ``manifest.sig``: its SM2 signature (DER) by the service key.

A restore takes the newest set (at or before ``--at``) and its chain back to the full set: the
database of that set, the blobs of all of them, the keyring; then, with a replica
(``PRESCREEN_REPLICA_DIR``, :mod:`prescreen.store.replica`), what was captured continuously after it:
the blobs and keys written there before they were acknowledged, and the SQLite database streamed by
Litestream, as it was at ``--at`` or at its newest.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.errors import InvalidRequestError
from prescreen.security.keyring import KEYRING_FILE, Keyring, keyring_for, master_key_path, write_document
from prescreen.security.keys import audit_signer
from prescreen.security.sm import sm3_file_hex, verify_sm2
from prescreen.store.blobs import raw_blob_store
from prescreen.store.db import database_url
from prescreen.store.keyring_store import replace_document
from prescreen.store.replica import restore_captured
from prescreen.store.schema import Instance, Study
from prescreen.store.schema_security import AuditHead

FULL, INCREMENTAL = "full", "incremental"
DATABASE = "database.sm4"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DB_AAD = b"prescreen-backup-database"
CHUNKED_MAGIC = b"PSC1\n"
#: the database snapshot is sealed this much at a time (memory stays bounded for any database size)
CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BackupSet:
    name: str
    path: Path
    kind: str
    created: str
    parent: str | None
    files: dict[str, str]
    detail: dict[str, Any]


UNREADABLE = "unreadable"


def _all_sets(root: Path) -> list[BackupSet]:
    """Every set folder in ``root``, oldest first; one whose manifest does not parse is of kind
    :data:`UNREADABLE` (reported by :func:`verify_backups`, never restored)."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file()) if root.is_dir() else []:
        try:
            doc = json.loads((folder / MANIFEST).read_text())
            found.append(
                BackupSet(folder.name, folder, doc["kind"], doc["created"], doc.get("parent"), doc["files"], doc)
            )
        except (ValueError, KeyError, TypeError) as exc:
            found.append(BackupSet(folder.name, folder, UNREADABLE, "", None, {}, {"error": type(exc).__name__}))
    return found


def _sets(root: Path) -> list[BackupSet]:
    return [s for s in _all_sets(root) if s.kind != UNREADABLE]


def list_sets(root: Path) -> list[BackupSet]:
    """The readable backup sets in ``root``, oldest first."""
    return _sets(root)


def _chain(sets: list[BackupSet], last: BackupSet) -> list[BackupSet]:
    """``last`` and its parents back to a full set, oldest first."""
    by_name = {s.name: s for s in sets}
    chain = [last]
    while chain[-1].kind != FULL:
        parent = chain[-1].parent
        if parent is None or parent not in by_name:
            raise InvalidRequestError(f"backup set {chain[-1].name} names a parent {parent!r} that is missing")
        chain.append(by_name[parent])
    return list(reversed(chain))


def _hash_file(path: Path) -> str:
    return sm3_file_hex(path)


def seal_chunked(keyring: Keyring, source: Path, target: Path, chunk: int = CHUNK_BYTES) -> None:
    """Seal ``source`` into ``target`` as a sequence of SM4-GCM envelopes of at most ``chunk`` bytes
    each, so a database of any size is sealed (and opened) a chunk at a time. Each envelope's
    associated data names its position and whether it is the last, so no chunk can be dropped,
    repeated, reordered or cut off unnoticed."""
    size = source.stat().st_size
    count = max(1, -(-size // chunk))
    with source.open("rb") as src, target.open("wb") as out:
        out.write(CHUNKED_MAGIC)
        for index in range(count):
            sealed = keyring.seal(src.read(chunk), _chunk_aad(index, index == count - 1))
            out.write(len(sealed).to_bytes(8, "big") + sealed)


def open_chunked(keyring: Keyring, source: Path, target: Path) -> None:
    """Open what :func:`seal_chunked` wrote (or a one-envelope snapshot of an earlier version) into
    ``target``, a chunk at a time.

    Raises:
        InvalidRequestError: a chunk is missing, cut off or out of place.
    """
    with source.open("rb") as src, target.open("wb") as out:
        if src.read(len(CHUNKED_MAGIC)) != CHUNKED_MAGIC:  # an earlier version's single envelope
            out.write(keyring.open(source.read_bytes(), DB_AAD))
            return
        index, last = 0, False
        while not last:
            head = src.read(8)
            if len(head) != 8:
                raise InvalidRequestError(f"{source.name} is cut off after chunk {index}")
            sealed = src.read(int.from_bytes(head, "big"))
            try:
                out.write(keyring.open(sealed, _chunk_aad(index, False)))
            except Exception:  # not a middle chunk: the last one, or a chunk out of place
                try:
                    out.write(keyring.open(sealed, _chunk_aad(index, True)))
                except Exception as exc:
                    raise InvalidRequestError(f"{source.name}: chunk {index} is damaged or out of place") from exc
                last = True
            index += 1
        if src.read(1):
            raise InvalidRequestError(f"{source.name} has data after its last chunk")


def _chunk_aad(index: int, last: bool) -> bytes:
    return DB_AAD + f"/{index}/{'last' if last else 'more'}".encode()


def _snapshot_sqlite(url: str, into: Path) -> None:
    source_path = make_url(url).database
    if not source_path:
        raise InvalidRequestError("the SQLite URL names no file")
    source = sqlite3.connect(source_path)
    target = sqlite3.connect(into)
    try:
        source.backup(target)  # a consistent snapshot, page by page, while others keep writing
    finally:
        target.close()
        source.close()


def _snapshot_postgres(url: str, into: Path) -> None:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run(["pg_dump", "--format=custom", "--file", str(into), plain], capture_output=True, text=True)
    if done.returncode != 0:
        raise InvalidRequestError(f"pg_dump failed: {done.stderr.strip()[-300:]}")


def store_counts(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        head = session.get(AuditHead, 1)
        return {
            "studies": int(session.scalar(select(func.count()).select_from(Study)) or 0),
            "instances": int(session.scalar(select(func.count()).select_from(Instance)) or 0),
            "audit_seq": head.seq if head else 0,
            "audit_hash": head.hash if head else None,
        }


def take_backup(settings: Settings, sessions: sessionmaker[Session], root: Path, kind: str) -> BackupSet:
    """Write one backup set of ``kind`` (``full`` or ``incremental``; an incremental without an
    earlier set is refused) into ``root``."""
    if kind not in (FULL, INCREMENTAL):
        raise InvalidRequestError(f"a backup is full or incremental, not {kind!r}")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    earlier = _sets(root)
    if kind == INCREMENTAL and not earlier:
        raise InvalidRequestError(f"no earlier backup in {root}: take a full one first")
    parent = earlier[-1] if kind == INCREMENTAL else None
    have: set[str] = set()
    if parent is not None:
        for member in _chain(earlier, parent):
            have |= {name.split("/", 1)[1] for name in member.files if name.startswith("blobs/")}
    created = datetime.now(UTC)
    name = created.strftime("%Y%m%dT%H%M%S.%fZ") + f"-{kind}"
    folder = root / f".{name}.partial"
    folder.mkdir(mode=0o700)
    keyring = keyring_for(settings)
    url = database_url(settings)
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        snapshot = Path(scratch) / "snapshot"
        (_snapshot_sqlite if url.startswith("sqlite") else _snapshot_postgres)(url, snapshot)
        seal_chunked(keyring, snapshot, folder / DATABASE)
    files[DATABASE] = _hash_file(folder / DATABASE)
    blobs = raw_blob_store(settings)
    (folder / "blobs").mkdir()
    for key in blobs.stored_keys():
        if key in have:
            continue
        (folder / "blobs" / key).write_bytes(blobs.get(key))
        files[f"blobs/{key}"] = _hash_file(folder / "blobs" / key)
    signer = audit_signer(settings)  # made (into the keyring) before the keyring is copied
    (folder / "keys").mkdir()
    write_document(folder / "keys", keyring.document())
    files[f"keys/{KEYRING_FILE}"] = _hash_file(folder / "keys" / KEYRING_FILE)
    doc = {
        "kind": kind,
        "created": created.isoformat(),
        "parent": parent.name if parent else None,
        "database_url_kind": "sqlite" if url.startswith("sqlite") else "postgresql",
        "files": files,
        **store_counts(sessions),
    }
    body = json.dumps(doc, indent=1, sort_keys=True).encode()
    (folder / MANIFEST).write_bytes(body)
    (folder / SIGNATURE).write_bytes(signer.sign(body))
    (folder / "service-sm2.pub.pem").write_text(signer.public_pem())
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    os.replace(folder, root / name)
    return next(s for s in _sets(root) if s.name == name)


@dataclass(frozen=True)
class Problem:
    set_name: str
    what: str


def verify_backups(root: Path) -> tuple[int, list[Problem]]:
    """Re-hash every file of every set against its manifest and check the manifests' SM2 signatures
    and chains. Returns the number of files checked and the problems found."""
    problems: list[Problem] = []
    checked = 0
    every = _all_sets(root)
    if not every:
        return 0, [Problem(str(root), "no backup set here")]
    problems += [Problem(s.name, "its manifest.json does not parse") for s in every if s.kind == UNREADABLE]
    sets = _sets(root)
    for item in sets:
        body = (item.path / MANIFEST).read_bytes()
        public = (
            (item.path / "service-sm2.pub.pem").read_text() if (item.path / "service-sm2.pub.pem").is_file() else ""
        )
        signature = (item.path / SIGNATURE).read_bytes() if (item.path / SIGNATURE).is_file() else b""
        if not verify_sm2(public, body, signature):
            problems.append(Problem(item.name, "the manifest's SM2 signature does not verify"))
        for name, digest in item.files.items():
            path = item.path / name
            checked += 1
            if not path.is_file():
                problems.append(Problem(item.name, f"{name} is missing"))
            elif _hash_file(path) != digest:
                problems.append(Problem(item.name, f"{name} does not match its SM3 hash"))
        try:
            _chain(sets, item)
        except InvalidRequestError as exc:
            problems.append(Problem(item.name, str(exc)))
    return checked, problems


def restore(
    settings: Settings, root: Path, at: datetime | None = None, replica: Path | None = None
) -> tuple[BackupSet, dict[str, int | bool]]:
    """Bring back the newest set at or before ``at`` into an empty home (and, for PostgreSQL, an
    empty database), then what ``replica`` captured after it (:mod:`prescreen.store.replica`): the
    state at ``at``, or the newest. The master key must be at ``PRESCREEN_MASTER_KEY_FILE``. Returns
    the set and what came from the replica.

    Raises:
        InvalidRequestError: no usable set, a home that is not empty, a set that does not verify.
        KeyFileError: the master key is not the one the backup's keys were wrapped with.
    """
    sets = _sets(root)
    if at is not None:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        sets = [s for s in sets if datetime.fromisoformat(s.created) <= at]
    if not sets:
        raise InvalidRequestError(f"no backup set in {root}" + (f" at or before {at.isoformat()}" if at else ""))
    last = sets[-1]
    chain = _chain(_sets(root), last)
    _, problems = verify_backups(root)
    bad = [p for p in problems if p.set_name in {s.name for s in chain}]
    if bad:
        raise InvalidRequestError(f"backup set {bad[0].set_name}: {bad[0].what}; not restored")
    home = _empty_home_with_master_key(settings)
    url = database_url(settings)
    kind = "sqlite" if url.startswith("sqlite") else "postgresql"
    if last.detail.get("database_url_kind", kind) != kind:
        raise InvalidRequestError(
            f"backup set {last.name} holds a {last.detail['database_url_kind']} database; this home uses {kind}"
        )
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        _restore_into(settings, home, url, last, chain)
        brought = restore_captured(settings, replica, home, at) if replica is not None else {}
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)  # never a half home: the next restore starts clean
        raise
    return last, brought


def _empty_home_with_master_key(settings: Settings) -> Path:
    home = settings.home
    if home.exists() and any(home.iterdir()):
        raise InvalidRequestError(f"{home} is not empty: restore into an empty home")
    master = master_key_path(settings)
    if not master.is_file():
        raise InvalidRequestError(
            f"no master key at {master}: point PRESCREEN_MASTER_KEY_FILE at the one of the backup"
        )
    return home


def restore_replica_only(settings: Settings, replica: Path, at: datetime | None = None) -> dict[str, int | bool]:
    """Bring back a home from the replica alone (no backup set): its keys and blobs, and a SQLite
    database as streamed at ``at``. On PostgreSQL the database comes back by the server's own
    point-in-time recovery first (README); this brings the home that goes with it.

    Raises:
        InvalidRequestError: a home that is not empty, no master key, no keyring in the replica.
    """
    home = _empty_home_with_master_key(settings)
    if not (replica / "keys" / KEYRING_FILE).is_file():
        raise InvalidRequestError(f"no keyring in {replica / 'keys'}: not a replica of a prescreen home")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return restore_captured(settings, replica, home, at)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise


def _restore_into(settings: Settings, home: Path, url: str, last: BackupSet, chain: list[BackupSet]) -> None:
    keys = home / "keys"
    keys.mkdir(mode=0o700)
    shutil.copyfile(last.path / "keys" / KEYRING_FILE, keys / KEYRING_FILE)
    keyring = Keyring(keys, master_key_path(settings))  # the set's own, whatever the service keeps its keys in
    if url.startswith("sqlite"):
        target = Path(make_url(url).database or home / "prescreen.db")
        open_chunked(keyring, last.path / DATABASE, target)
    else:
        with tempfile.NamedTemporaryFile(dir=home, suffix=".dump") as dump:
            open_chunked(keyring, last.path / DATABASE, Path(dump.name))
            plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            done = subprocess.run(
                ["pg_restore", "--no-owner", "--dbname", plain, dump.name], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise InvalidRequestError(f"pg_restore failed: {done.stderr.strip()[-300:]}")
    if settings.keyring_store == "database":  # the set's keyring is newer than the snapshot's row
        replace_document(settings, keyring.document())
    blobs = raw_blob_store(settings, home)
    for member in chain:
        for name in member.files:
            if name.startswith("blobs/"):
                key = name.split("/", 1)[1]
                blobs.put_as(key, (member.path / name).read_bytes())
