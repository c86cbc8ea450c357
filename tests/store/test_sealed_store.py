"""Encryption at rest in the store (``prescreen.store.sealed``, ``prescreen.store.sealed_type``):
blobs sealed under a keyed address, the sealed patient columns of ``studies`` on SQLite and
PostgreSQL (``sessions``), what lands in the SQLite file, and sealing what an earlier version stored
in plain text (``seal_existing``)."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy import make_url, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import BlobNotFoundError, KeyFileError
from prescreen.security import envelope
from prescreen.security.keyring import Keyring
from prescreen.store.blobs import FileBlobStore
from prescreen.store.ingest import Ingestor, store_files
from prescreen.store.schema import Instance, Study
from prescreen.store.sealed import SealedBlobStore, seal_existing
from prescreen.store.sealed_type import PREFIX

Sessions = sessionmaker[Session]
MARKER = b"PLAINTEXT-MARKER-4711"
NAME = "张三丰"
PATIENT_ID = "PLAINTEXT-ID-4711"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "keys", tmp_path / "vault" / "master.key")


@pytest.fixture
def sealed(tmp_path: Path, keyring: Keyring) -> SealedBlobStore:
    return SealedBlobStore(FileBlobStore(tmp_path / "sealed-blobs"), keyring)


def _path(store: SealedBlobStore, key: str) -> Path:
    assert isinstance(store.files, FileBlobStore)
    return store.files.root / key[:2] / key[2:4] / key


# --------------------------------------------------------------------------- blobs


def test_same_bytes_same_address_stored_once(sealed: SealedBlobStore) -> None:
    data = b"study bytes " + MARKER
    key = sealed.put(data)
    assert sealed.put(data) == key
    assert sealed.put(b"other bytes") != key
    assert sealed.files.stored_keys() == sorted([key, sealed.put(b"other bytes")])
    assert sealed.get(key) == data
    assert sealed.exists(key)
    sealed.delete(key)
    assert not sealed.exists(key)
    with pytest.raises(BlobNotFoundError):
        sealed.get(key)


def test_the_address_is_not_the_sha256_of_the_content(
    sealed: SealedBlobStore, keyring: Keyring, tmp_path: Path
) -> None:
    data = b"study bytes " + MARKER
    key = sealed.put(data)
    assert key != hashlib.sha256(data).hexdigest()
    assert key == keyring.mac_hex(data)
    # another home (another MAC key) gives the same bytes another address
    other = Keyring(tmp_path / "other" / "keys", tmp_path / "other" / "master.key")
    assert SealedBlobStore(FileBlobStore(tmp_path / "other-blobs"), other).put(data) != key


def test_the_file_on_disk_holds_an_envelope_not_the_plaintext(sealed: SealedBlobStore) -> None:
    data = b"header " + MARKER + b" trailer" * 100
    key = sealed.put(data)
    stored = _path(sealed, key).read_bytes()
    assert envelope.is_sealed(stored)
    assert MARKER not in stored
    assert len(stored) == envelope.HEADER + len(data) + envelope.TAG_BYTES


def test_a_file_copied_to_another_address_does_not_open(sealed: SealedBlobStore) -> None:
    a = sealed.put(b"blob a " + MARKER)
    b = sealed.put(b"blob b")
    shutil.copyfile(_path(sealed, a), _path(sealed, b))
    with pytest.raises(KeyFileError):
        sealed.get(b)
    assert sealed.get(a) == b"blob a " + MARKER
    # a copy under an address that was never used does not open either
    made_up = "ab" * 32
    sealed.files.put_as(made_up, _path(sealed, a).read_bytes())
    with pytest.raises(KeyFileError):
        sealed.get(made_up)


def test_a_changed_byte_of_a_sealed_file_does_not_open(sealed: SealedBlobStore) -> None:
    key = sealed.put(b"blob " + MARKER)
    path = _path(sealed, key)
    changed = bytearray(path.read_bytes())
    changed[-20] ^= 1
    path.write_bytes(bytes(changed))
    with pytest.raises(KeyFileError):
        sealed.get(key)


def test_a_legacy_plain_blob_is_read_as_is_then_sealed_in_place(sealed: SealedBlobStore) -> None:
    data = b"written by an earlier version " + MARKER
    legacy = sealed.files.put(data)  # plain, under its SHA-256
    assert legacy == hashlib.sha256(data).hexdigest()
    assert sealed.get(legacy) == data
    assert sealed.seal_in_place(legacy) is True
    stored = _path(sealed, legacy).read_bytes()
    assert envelope.is_sealed(stored) and MARKER not in stored
    assert sealed.get(legacy) == data  # the same address still reads
    assert sealed.seal_in_place(legacy) is False  # already sealed: nothing to do
    assert sealed.get(legacy) == data


# --------------------------------------------------------------------------- sealed patient columns


def _new_uid() -> str:
    return f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**20}"


def _add_study(sessions: Sessions, patient_name: str | None, patient_id: str | None) -> str:
    with sessions.begin() as session:
        study = Study(study_uid=_new_uid(), patient_name=patient_name, patient_id=patient_id)
        session.add(study)
        session.flush()
        return study.id


def _raw(sessions: Sessions, study_id: str) -> tuple[str | None, str | None]:
    with sessions() as session:
        row = session.execute(
            text("select patient_name, patient_id from studies where id = :id"), {"id": study_id}
        ).one()
        return row[0], row[1]


def test_patient_columns_round_trip_sealed(sessions: Sessions) -> None:
    study_id = _add_study(sessions, NAME, PATIENT_ID)
    with sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None
        assert (study.patient_name, study.patient_id) == (NAME, PATIENT_ID)
    raw_name, raw_id = _raw(sessions, study_id)
    assert raw_name is not None and raw_id is not None
    assert raw_name.startswith(PREFIX) and raw_id.startswith(PREFIX)
    assert NAME not in raw_name and PATIENT_ID not in raw_id
    assert raw_name != _raw(sessions, _add_study(sessions, NAME, PATIENT_ID))[0]  # a fresh nonce per value

    none_id = _add_study(sessions, None, None)
    assert _raw(sessions, none_id) == (None, None)
    with sessions() as session:
        study = session.get(Study, none_id)
        assert study is not None and (study.patient_name, study.patient_id) == (None, None)

    with sessions.begin() as session:  # an update through the ORM is sealed too
        session.execute(update(Study).where(Study.id == study_id).values(patient_name="李四"))
    assert _raw(sessions, study_id)[0].startswith(PREFIX)  # type: ignore[union-attr]
    with sessions() as session:
        assert session.scalars(select(Study.patient_name).where(Study.id == study_id)).one() == "李四"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_sqlite_file_holds_neither_name_nor_id(sessions: Sessions, database_url: str, blobs: FileBlobStore) -> None:
    """The whole ingestion path (study, instance, audit record), then the bytes of the database files."""
    store_files(
        sessions, blobs, {"rec.hea": b"rec 1 500 5000\n", "rec.dat": b"\x00\x01" * 64}, patient_id=PATIENT_ID,
        patient_name=NAME,
    )  # fmt: skip
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert (study.patient_name, study.patient_id) == (NAME, PATIENT_ID)
        study_id = study.id
    raw_name, raw_id = _raw(sessions, study_id)
    assert raw_name.startswith(PREFIX) and raw_id.startswith(PREFIX)  # type: ignore[union-attr]
    path = Path(make_url(database_url).database or "")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    files = [p for p in (path, path.with_name(path.name + "-wal")) if p.is_file()]
    for file in files:
        content = file.read_bytes()
        for secret in (NAME.encode("utf-8"), PATIENT_ID.encode()):
            assert secret not in content, (file.name, secret)


def test_a_legacy_plain_row_is_read_as_is_then_sealed_by_seal_existing(
    sessions: Sessions, blobs: FileBlobStore
) -> None:
    plain_data = b"\x00\x01" * 64 + MARKER
    received = store_files(sessions, blobs, {"rec.dat": plain_data}, modality="ECG", patient_id="SEALED-ID")
    legacy_id = received[0].study_id
    with sessions.begin() as session:  # as an earlier version wrote it: plain text
        session.execute(
            text("update studies set patient_name = :n, patient_id = :i where id = :id"),
            {"n": NAME, "i": PATIENT_ID, "id": legacy_id},
        )
    sealed_id = _add_study(sessions, "王五", "ALREADY-SEALED")
    before_sealed = _raw(sessions, sealed_id)
    assert _raw(sessions, legacy_id) == (NAME, PATIENT_ID)
    with sessions() as session:
        study = session.get(Study, legacy_id)
        assert study is not None and (study.patient_name, study.patient_id) == (NAME, PATIENT_ID)
        blob_key = session.scalars(select(Instance.blob_key)).one()
    assert blob_key == hashlib.sha256(plain_data).hexdigest()  # a plain blob of an earlier version

    assert seal_existing(Ingestor(sessions, blobs)) == (1, 1)

    raw_name, raw_id = _raw(sessions, legacy_id)
    assert raw_name.startswith(PREFIX) and raw_id.startswith(PREFIX)  # type: ignore[union-attr]
    assert _raw(sessions, sealed_id) == before_sealed  # sealed rows are left alone
    with sessions() as session:
        study = session.get(Study, legacy_id)
        assert study is not None and (study.patient_name, study.patient_id) == (NAME, PATIENT_ID)
    stored = (blobs.root / blob_key[:2] / blob_key[2:4] / blob_key).read_bytes()
    assert envelope.is_sealed(stored) and MARKER not in stored
    assert SealedBlobStore(blobs).get(blob_key) == plain_data  # same address, sealed
    assert seal_existing(Ingestor(sessions, blobs)) == (0, 0)  # resumable: nothing left to do
