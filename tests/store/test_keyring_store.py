"""The keyring in the shared database (``PRESCREEN_KEYRING_STORE=database``), on SQLite and
PostgreSQL: replicas with different homes and the same master key seal and open each other's data,
a month's data key is made once however many replicas race for it, a home's keyring file is adopted
by an empty database, and a wrong master key is refused."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from prescreen.config import Settings
from prescreen.errors import KeyFileError
from prescreen.security import keyring as keyring_module
from prescreen.security.keyring import KEYRING_FILE, FolderStorage, Keyring, keyring_for
from prescreen.store.keyring_store import DatabaseStorage, database_storage


@pytest.fixture(autouse=True)
def own_keyrings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring_module, "_KEYRINGS", {})


def replica(tmp_path: Path, name: str, url: str, master: Path) -> Settings:
    return Settings(home=tmp_path / name, database_url=url, master_key_file=master, keyring_store="database")


def test_replicas_share_their_keys_through_the_database(database_url: str, tmp_path: Path) -> None:
    master = tmp_path / "vault" / "master.key"
    a = keyring_for(replica(tmp_path, "a", database_url, master))
    b = keyring_for(replica(tmp_path, "b", database_url, master))
    assert a is not b
    sealed = a.seal("张三丰".encode(), b"aad")
    assert b.open(sealed, b"aad").decode() == "张三丰"
    assert a.mac_hex(b"study") == b.mac_hex(b"study")  # the same content address on every replica
    made = b.secret_or_make("service-sm2", lambda: b"made by b")
    assert a.secret_or_make("service-sm2", lambda: b"made by a") == made == b"made by b"
    assert not (tmp_path / "a" / "keys" / KEYRING_FILE).exists()  # nothing on the replica's disk


def test_a_month_key_is_made_once_when_replicas_race_for_it(database_url: str, tmp_path: Path) -> None:
    master = tmp_path / "vault" / "master.key"
    rings = [keyring_for(replica(tmp_path, f"r{i}", database_url, master)) for i in range(4)]
    month = datetime(2031, 5, 1, tzinfo=UTC)
    with ThreadPoolExecutor(max_workers=4) as pool:
        made = list(pool.map(lambda ring: ring.current(month), rings * 3))
    assert len({key_id for key_id, _ in made}) == 1
    assert len({key for _, key in made}) == 1


def test_a_home_keyring_is_adopted_by_an_empty_database(database_url: str, tmp_path: Path) -> None:
    master = tmp_path / "vault" / "master.key"
    single = Keyring(tmp_path / "home" / "keys", master)  # a single machine, as it was
    sealed = single.seal(b"old data")
    shared = keyring_for(replica(tmp_path, "home", database_url, master))
    assert shared.open(sealed) == b"old data"
    other = keyring_for(replica(tmp_path, "second", database_url, master))
    assert other.open(sealed) == b"old data"
    assert other.where == "the database (keyring_documents)"


def test_a_database_keyring_under_another_master_key_is_refused(database_url: str, tmp_path: Path) -> None:
    keyring_for(replica(tmp_path, "a", database_url, tmp_path / "vault" / "master.key"))
    with pytest.raises(KeyFileError, match="is not the one that wrapped the database"):
        keyring_for(replica(tmp_path, "b", database_url, tmp_path / "other-vault" / "master.key"))


def test_the_database_holds_only_wrapped_keys(database_url: str, tmp_path: Path) -> None:
    ring = keyring_for(replica(tmp_path, "a", database_url, tmp_path / "vault" / "master.key"))
    key_id, key = ring.current()
    with create_engine(database_url).connect() as connection:
        stored = connection.execute(text("SELECT doc FROM keyring_documents")).scalar_one()
    assert key_id in stored and key.hex() not in stored and ring.secret("mac").hex() not in stored


def test_the_storage_adopts_nothing_when_the_database_has_a_keyring(database_url: str, tmp_path: Path) -> None:
    master = tmp_path / "vault" / "master.key"
    first = keyring_for(replica(tmp_path, "a", database_url, master))
    Keyring(tmp_path / "b" / "keys", master).current()  # another keyring file in b's home
    storage = database_storage(replica(tmp_path, "b", database_url, master))
    assert isinstance(storage, DatabaseStorage)
    assert storage.load() == first.document()
    assert FolderStorage(tmp_path / "b" / "keys").load() != first.document()
