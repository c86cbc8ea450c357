"""Encryption at rest for the store: a blob store whose files are SM4-GCM envelopes, and a column
type whose values are.

* :class:`SealedBlobStore` wraps a :class:`~prescreen.store.blobs.RawBlobStore` (a folder or an object
  store). A blob's address is the HMAC-SM3 of its plaintext under the keyring's MAC key (the same
  bytes give the same address, so duplicates are still stored once, and the address reveals nothing
  about the content); the file holds the envelope, with the address as associated data (a file
  moved to another address does not open). Files written by an earlier version, in plain text, are
  read as they are until ``prescreen encrypt-existing`` converts them.
* :class:`SealedText` is a column whose values are stored as ``sm4:`` + base64 of an envelope,
  opened on read; plain values of an earlier version are read as they are.

Both take the keys from :func:`prescreen.security.keyring.keyring_for` of the process's settings.
"""

from __future__ import annotations

from typing import Any

from prescreen.config import get_settings
from prescreen.security import envelope
from prescreen.security.keyring import Keyring, keyring_for
from prescreen.store.blobs import RawBlobStore
from prescreen.store.sealed_type import is_sealed_value


def _keyring() -> Keyring:
    return keyring_for(get_settings())


class SealedBlobStore:
    """Blobs sealed with SM4-GCM (see the module docstring)."""

    def __init__(self, files: RawBlobStore, keyring: Keyring | None = None) -> None:
        self.files = files
        self._keyring = keyring

    @property
    def keyring(self) -> Keyring:
        return self._keyring or _keyring()

    def put(self, data: bytes, durable: bool = True) -> str:
        key = self.keyring.mac_hex(data)
        if self.files.exists(key):
            return key
        self.files.put_as(key, self.keyring.seal(data, key.encode()), durable=durable)
        return key

    def sync(self) -> None:
        self.files.sync()

    def get(self, key: str) -> bytes:
        stored = self.files.get(key)
        if not envelope.is_sealed(stored):
            return stored  # written in plain text by an earlier version
        return self.keyring.open(stored, key.encode())

    def delete(self, key: str) -> None:
        self.files.delete(key)

    def exists(self, key: str) -> bool:
        return self.files.exists(key)

    def seal_in_place(self, key: str) -> bool:
        """Encrypt one plain blob of an earlier version where it lies (its address is kept);
        ``False`` when it was sealed already."""
        stored = self.files.get(key)
        if envelope.is_sealed(stored):
            return False
        self.files.put_as(key, self.keyring.seal(stored, key.encode()), replace=True)
        return True


def seal_existing(ingestor: Any) -> tuple[int, int]:
    """Seal a store made by an earlier version, in place and resumably: every plain blob (its address
    kept) and every study's plain patient fields. Returns (blobs sealed, studies sealed)."""
    from sqlalchemy import select
    from sqlalchemy.orm.attributes import flag_modified

    from prescreen.config import get_settings
    from prescreen.security.keys import patient_pseudonym
    from prescreen.store.schema import Study

    files = ingestor.blobs.files if isinstance(ingestor.blobs, SealedBlobStore) else ingestor.blobs
    sealed_store = SealedBlobStore(files)
    blobs = sum(1 for key in files.stored_keys() if sealed_store.seal_in_place(key))
    studies = 0
    batch = 500
    after = ""
    while True:
        with ingestor.sessions.begin() as session:
            rows = session.scalars(select(Study).where(Study.id > after).order_by(Study.id).limit(batch)).all()
            if not rows:
                return blobs, studies
            raw = _raw_patient_columns(session, [r.id for r in rows])
            for row in rows:
                if any(value is not None and not is_sealed_value(value) for value in raw.get(row.id, ())):
                    flag_modified(row, "patient_name")
                    flag_modified(row, "patient_id")
                    studies += 1
                if row.patient_id and row.patient_index is None:  # stored before the blind index
                    row.patient_index = patient_pseudonym(get_settings(), row.patient_id)
            after = rows[-1].id


def _raw_patient_columns(session: Any, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """The stored (not decrypted) patient columns of these studies, in one query."""
    from sqlalchemy import bindparam, text

    query = text("select id, patient_name, patient_id from studies where id in :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    return {row[0]: (row[1], row[2]) for row in session.execute(query, {"ids": ids})}
