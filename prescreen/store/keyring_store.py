"""The keyring in the shared database (``PRESCREEN_KEYRING_STORE=database``): one row of
``keyring_documents``, changed under a lock every replica of the service honours — a PostgreSQL
transaction-level advisory lock, or SQLite's write lock (``BEGIN IMMEDIATE``). The document holds
only keys wrapped by the master key; the master key itself stays a file on each machine
(``PRESCREEN_MASTER_KEY_FILE``, the same key everywhere, from the deployment's secret store).

A home that already has ``keys/keyring.json`` brings it into an empty database at the first start,
so a single machine becomes the first replica without re-encrypting anything.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from prescreen.config import Settings
from prescreen.security import keyring as keyring_module
from prescreen.security.keyring import FolderStorage
from prescreen.store.db import database_url, make_engine, migrate

ADVISORY_LOCK = 0x70_72_65_6B  # "prek": the keyring's lock among PostgreSQL advisory locks
ROW = 1


class DatabaseStorage:
    """The keyring document as one row of the database at ``url`` (migrated to the newest schema).

    Args:
        url: the service's database.
        adopt: a folder storage whose ``keyring.json`` is brought in when the database has none.
    """

    def __init__(self, url: str, adopt: FolderStorage | None = None) -> None:
        migrate(url)
        self.engine = make_engine(url)
        self.postgres = not url.startswith("sqlite")
        self.where = "the database (keyring_documents)"
        self._held = threading.local()
        if adopt is not None:
            with self.locked():
                found = adopt.load()
                if self.load() is None and found is not None:
                    self.save(found)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self.engine.begin() as connection:
            if self.postgres:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
            self._held.connection = connection
            try:
                yield
            finally:
                self._held.connection = None

    def _connection(self) -> Connection | None:
        held: Connection | None = getattr(self._held, "connection", None)
        return held

    def load(self) -> dict[str, Any] | None:
        query = text("SELECT doc FROM keyring_documents WHERE id = :id")
        held = self._connection()
        if held is not None:
            found = held.execute(query, {"id": ROW}).scalar()
        else:
            with self.engine.connect() as connection:
                found = connection.execute(query, {"id": ROW}).scalar()
        if found is None:
            return None
        doc: dict[str, Any] = json.loads(found)
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        held = self._connection()
        if held is None:
            raise RuntimeError("the keyring document is saved only under its lock")
        values = {"id": ROW, "doc": json.dumps(doc, sort_keys=True), "at": datetime.now(UTC)}
        changed = held.execute(
            text("UPDATE keyring_documents SET doc = :doc, updated_at = :at WHERE id = :id"), values
        ).rowcount
        if not changed:
            held.execute(text("INSERT INTO keyring_documents (id, doc, updated_at) VALUES (:id, :doc, :at)"), values)


def database_storage(settings: Settings) -> DatabaseStorage:
    """The shared keyring of ``settings``' database, adopting the home's keyring file if it is the first."""
    return DatabaseStorage(database_url(settings), adopt=FolderStorage((settings.home / "keys").resolve()))


def replace_document(settings: Settings, doc: dict[str, Any]) -> None:
    """Put ``doc`` into the database as the shared keyring (a restore: the set's keyring is newer than
    the snapshot's row)."""
    storage = DatabaseStorage(database_url(settings))
    with storage.locked():
        storage.save(doc)


keyring_module.STORAGES["database"] = database_storage
