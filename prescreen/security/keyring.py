"""The key hierarchy of data at rest.

* The **master key** (KEK, 128-bit SM4) lives in ``PRESCREEN_MASTER_KEY_FILE`` (made once, mode 0600;
  default ``$PRESCREEN_HOME/keys/master.key``; keep it apart from the backups, on another disk or an
  HSM-backed mount). Nothing is encrypted with it but other keys.
* **Data keys** (DEKs): one per calendar month, made when first needed, stored in
  ``$PRESCREEN_HOME/keys/keyring.json`` wrapped (SM4-GCM) by the master key. Every envelope names its
  data key, so the master key can be rotated (:meth:`Keyring.rotate`) by re-wrapping the data keys
  alone, without touching the data.
* A **MAC key** for content addresses and blind indexes (HMAC-SM3), and **secrets** other parts keep
  here wrapped (the service's SM2 key, physicians' SM2 keys): stored the same way.

The keyring document is changed under an exclusive lock, so the service and a command line may both
use it. Where it lives is a :class:`KeyringStorage`: the file ``keys/keyring.json`` of the home
(:class:`FolderStorage`, the default), or, for replicas of the service on several machines, one row
of the shared database (``PRESCREEN_KEYRING_STORE=database``,
:class:`prescreen.store.keyring_store.DatabaseStorage`), so that every replica seals and opens with
the same data keys, MAC key and physicians' keys.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prescreen.config import Settings
from prescreen.errors import KeyFileError
from prescreen.security import envelope
from prescreen.security.sm import hmac_sm3_hex, sm3_hex, write_private

KEYRING_FILE = "keyring.json"
MAC_KEY_BYTES = 32


def master_key_path(settings: Settings) -> Path:
    return settings.master_key_file or settings.home / "keys" / "master.key"


def _read_master(path: Path) -> bytes:
    if not path.exists():
        write_private(path, envelope.new_key().hex().encode())
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the master key {path}: {type(exc).__name__}") from None
    if len(key) != envelope.KEY_BYTES:
        raise KeyFileError(f"the master key {path} is not a {envelope.KEY_BYTES}-byte SM4 key (hex)")
    return key


def _kek_id(kek: bytes) -> str:
    return sm3_hex(b"prescreen-kek" + kek)[: envelope.KEY_ID_BYTES]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode())


class KeyringStorage(Protocol):
    """Where the keyring document lives (it holds only keys wrapped by the master key)."""

    where: str
    """Where it is, for messages (a path, or the database)."""

    def locked(self) -> AbstractContextManager[None]:
        """Exclusive access across processes and machines while the document is read and changed."""
        ...

    def load(self) -> dict[str, Any] | None:
        """The document, or ``None`` when there is none yet."""
        ...

    def save(self, doc: dict[str, Any]) -> None:
        """Replace the document durably (called under :meth:`locked`)."""
        ...


def write_document(folder: Path, doc: dict[str, Any]) -> None:
    """Write ``keyring.json`` into ``folder`` atomically and durably."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".keyring-")
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, folder / KEYRING_FILE)


class FolderStorage:
    """The keyring as ``<folder>/keyring.json``, locked with ``flock`` (one machine)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder / KEYRING_FILE)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, open(self.folder / ".keyring.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> dict[str, Any] | None:
        path = self.folder / KEYRING_FILE
        if not path.exists():
            return None
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        write_document(self.folder, doc)


class Keyring:
    """Keys of one home (or of all replicas of a service) under one master key.

    Args:
        folder: where ``keyring.json`` lives (``$PRESCREEN_HOME/keys``) when no ``storage`` is given.
        master_file: the master key file.
        mirror: a second folder the keyring is written to, on another disk (continuous capture:
            ``PRESCREEN_REPLICA_DIR/keys``), so a data key made after the last backup is not lost.
        storage: where the document lives (default: :class:`FolderStorage` of ``folder``).
    """

    def __init__(
        self, folder: Path, master_file: Path, mirror: Path | None = None, storage: KeyringStorage | None = None
    ) -> None:
        self.folder = folder
        self.master_file = master_file
        self.mirror = mirror
        self.storage: KeyringStorage = storage or FolderStorage(folder)
        self._kek = _read_master(master_file)
        self._cache: dict[str, bytes] = {}
        self._doc = self._load_or_create()
        if mirror is not None:
            self.capture()

    # -- the file ---------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """Where the keyring document lives (for messages)."""
        return self.storage.where

    def _locked(self) -> AbstractContextManager[None]:
        return self.storage.locked()

    def _read(self) -> dict[str, Any]:
        found = self.storage.load()
        if found is None:
            raise KeyFileError(f"no keyring in {self.where}")
        doc = found
        if doc.get("kek_id") != _kek_id(self._kek):  # rotated by another process since: read the new key
            self._kek = _read_master(self.master_file)
        pending = self.master_file.with_name(self.master_file.name + ".new")
        if doc.get("kek_id") != _kek_id(self._kek) and pending.is_file():
            # a rotation stopped after rewriting the keyring, before moving its new key into place: finish it
            candidate = _read_master(pending)
            if doc.get("kek_id") == _kek_id(candidate):
                os.replace(pending, self.master_file)
                self._kek = candidate
        if doc.get("kek_id") != _kek_id(self._kek):
            raise KeyFileError(
                f"the master key {self.master_file} is not the one that wrapped {self.where} "
                "(restore or point PRESCREEN_MASTER_KEY_FILE at the right key)"
            )
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        if self.mirror is not None:  # the mirror first: a key is never used before it is captured
            write_document(self.mirror, doc)
        self.storage.save(doc)

    def document(self) -> dict[str, Any]:
        """The keyring document as it is now (wrapped keys only), e.g. for a backup set."""
        with self._locked():
            self._doc = self._read()
            return json.loads(json.dumps(self._doc))  # type: ignore[no-any-return]

    def _load_or_create(self) -> dict[str, Any]:
        with self._locked():
            if self.storage.load() is not None:
                return self._read()
            doc: dict[str, Any] = {
                "kek_id": _kek_id(self._kek),
                "data_keys": {},
                "current": {},
                "secrets": {},
                "created": datetime.now(UTC).isoformat(),
            }
            doc["secrets"]["mac"] = self._wrap(os.urandom(MAC_KEY_BYTES), "mac")
            self._write(doc)
            return doc

    def _wrap(self, key: bytes, name: str) -> str:
        return _b64(envelope.seal(self._kek, _kek_id(self._kek), key, name.encode()))

    def _unwrap(self, wrapped: str, name: str) -> bytes:
        return envelope.open_sealed(self._kek, _unb64(wrapped), name.encode())

    # -- data keys --------------------------------------------------------------------------

    def data_key(self, key_id: str) -> bytes:
        """The data key ``key_id`` (raises ``KeyFileError`` for an unknown one)."""
        if key_id in self._cache:
            return self._cache[key_id]
        wrapped = self._doc["data_keys"].get(key_id)
        if wrapped is None:
            with self._locked():
                self._doc = self._read()  # made by another process since
            wrapped = self._doc["data_keys"].get(key_id)
        if wrapped is None:
            raise KeyFileError(f"no data key {key_id!r} in {self.where}")
        key = self._unwrap(wrapped, f"dek:{key_id}")
        self._cache[key_id] = key
        return key

    def current(self, now: datetime | None = None) -> tuple[str, bytes]:
        """The data key of this month (made on first use)."""
        period = (now or datetime.now(UTC)).strftime("%Y-%m")
        key_id = self._doc["current"].get(period)
        if key_id is None:
            with self._locked():
                self._doc = self._read()
                key_id = self._doc["current"].get(period)
                if key_id is None:
                    key_id = os.urandom(envelope.KEY_ID_BYTES // 2).hex()
                    self._doc["data_keys"][key_id] = self._wrap(envelope.new_key(), f"dek:{key_id}")
                    self._doc["current"][period] = key_id
                    self._write(self._doc)
        return key_id, self.data_key(key_id)

    def seal(self, plaintext: bytes, associated: bytes = b"") -> bytes:
        key_id, key = self.current()
        return envelope.seal(key, key_id, plaintext, associated)

    def open(self, data: bytes, associated: bytes = b"") -> bytes:
        return envelope.open_sealed(self.data_key(envelope.key_id_of(data)), data, associated)

    # -- MAC and wrapped secrets -----------------------------------------------------------

    def mac_hex(self, data: bytes) -> str:
        """HMAC-SM3 under the keyring's MAC key: content addresses and blind indexes."""
        return hmac_sm3_hex(self.secret("mac"), data)

    def secret(self, name: str) -> bytes:
        if name in self._cache:
            return self._cache[name]
        wrapped = self._doc["secrets"].get(name)
        if wrapped is None:
            with self._locked():
                self._doc = self._read()
            wrapped = self._doc["secrets"].get(name)
        if wrapped is None:
            raise KeyFileError(f"no secret {name!r} in {self.where}")
        value = self._unwrap(wrapped, name)
        self._cache[name] = value
        return value

    def put_secret(self, name: str, value: bytes) -> None:
        """Keep ``value`` wrapped by the master key (replacing one of the same name)."""
        with self._locked():
            self._doc = self._read()
            self._doc["secrets"][name] = self._wrap(value, name)
            self._write(self._doc)
        self._cache[name] = value

    def secret_or_make(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret ``name``, made by ``make`` (once, under the lock) when there is none yet."""
        if name in self._cache or name in self._doc["secrets"]:
            return self.secret(name)
        with self._locked():
            self._doc = self._read()
            if name not in self._doc["secrets"]:
                self._doc["secrets"][name] = self._wrap(make(), name)
                self._write(self._doc)
        return self.secret(name)

    def capture(self) -> None:
        """Write the keyring as it is now to the mirror folder as well (when there is one)."""
        if self.mirror is None:
            return
        with self._locked():
            self._doc = self._read()
            self._write(self._doc)

    def knows(self, key_id: str) -> bool:
        """Whether ``key_id`` is one of this keyring's data keys (as last read)."""
        return key_id in self._doc["data_keys"]

    # -- rotation and status ---------------------------------------------------------------

    def rotate(self) -> str:
        """A new master key: every data key and secret re-wrapped under it, the data untouched. The old
        key is kept beside the new one as ``<file>.previous`` until the keyring is rewritten, so a crash
        halfway loses nothing. Returns the new key's id."""
        with self._locked():
            doc = self._read()
            plain_keys = {k: self._unwrap(v, f"dek:{k}") for k, v in doc["data_keys"].items()}
            plain_secrets = {k: self._unwrap(v, k) for k, v in doc["secrets"].items()}
            previous = self.master_file.with_name(self.master_file.name + ".previous")
            previous.unlink(missing_ok=True)
            os.link(self.master_file, previous)
            new = envelope.new_key()
            old = self._kek
            self._kek = new
            doc["kek_id"] = _kek_id(new)
            doc["data_keys"] = {k: self._wrap(v, f"dek:{k}") for k, v in plain_keys.items()}
            doc["secrets"] = {k: self._wrap(v, k) for k, v in plain_secrets.items()}
            doc["rotated"] = datetime.now(UTC).isoformat()
            temp = self.master_file.with_name(self.master_file.name + ".new")
            temp.unlink(missing_ok=True)
            write_private(temp, new.hex().encode())
            try:
                self._write(doc)
            except BaseException:
                self._kek = old
                raise
            os.replace(temp, self.master_file)
            previous.unlink(missing_ok=True)
            self._doc = doc
            return str(doc["kek_id"])

    def status(self) -> dict[str, Any]:
        doc = self._read()
        return {
            "master_key_file": str(self.master_file),
            "master_key_id": doc["kek_id"],
            "data_keys": len(doc["data_keys"]),
            "periods": sorted(doc["current"]),
            "secrets": sorted(doc["secrets"]),
            "created": doc.get("created"),
            "rotated": doc.get("rotated"),
        }


StorageFactory = Callable[[Settings], KeyringStorage]
STORAGES: dict[str, StorageFactory] = {"home": lambda settings: FolderStorage((settings.home / "keys").resolve())}
"""Keyring storages by the name ``PRESCREEN_KEYRING_STORE`` gives; ``database`` is registered by
:mod:`prescreen.store.keyring_store` (imported with the store)."""

_KEYRINGS: dict[tuple[str, Path, Path], Keyring] = {}
_KEYRINGS_LOCK = threading.Lock()


def keyring_for(settings: Settings) -> Keyring:
    """The keyring of a home, or of the shared database (one per process, storage and master key).

    Raises:
        KeyFileError: ``PRESCREEN_KEYRING_STORE`` names a storage this process does not have.
    """
    folder = (settings.home / "keys").resolve()
    master = master_key_path(settings).resolve()
    mirror = (settings.replica_dir / "keys").resolve() if settings.replica_dir is not None else None
    kind = settings.keyring_store
    where = f"{kind}:{settings.database_url or ''}" if kind != "home" else kind
    with _KEYRINGS_LOCK:
        found = _KEYRINGS.get((where, folder, master))
        if found is None:
            make = STORAGES.get(kind)
            if make is None:
                raise KeyFileError(f"keyring store {kind!r} is not available here (expected one of {sorted(STORAGES)})")
            found = _KEYRINGS[(where, folder, master)] = Keyring(folder, master, mirror, make(settings))
        if mirror is not None and found.mirror != mirror:
            found.mirror = mirror
            found.capture()
        return found


def open_sealed_any(preferred: Keyring, data: bytes, associated: bytes = b"") -> bytes:
    """Open an envelope with ``preferred``, or with another keyring this process has loaded that holds
    its data key (a process that served two homes, as tests do, reads what it sealed under either)."""
    key_id = envelope.key_id_of(data)
    if not preferred.knows(key_id):
        with _KEYRINGS_LOCK:
            others = [ring for ring in _KEYRINGS.values() if ring is not preferred and ring.knows(key_id)]
        if others:
            return others[0].open(data, associated)
    return preferred.open(data, associated)
