"""Content-addressed blob store: received files, keyed by their SHA-256 (or, sealed, by a keyed hash:
:mod:`prescreen.store.sealed`).

One small interface (:class:`BlobStore`) so that encryption at rest wraps it without touching callers,
and one below it (:class:`RawBlobStore`: bytes under a given address) with two implementations:
:class:`FileBlobStore`, the home's folder, and :class:`~prescreen.store.object_store.S3BlobStore`, an
S3-compatible object store shared by replicas (``PRESCREEN_BLOB_URL``); :func:`raw_blob_store` picks
one from the settings. :class:`FileBlobStore` writes to a temporary file, fsyncs it, renames it into
place and fsyncs the folder: once ``put`` returns, the bytes survive a crash or power loss, so a
study may be acknowledged to its sender.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prescreen.errors import BlobNotFoundError

if TYPE_CHECKING:
    from prescreen.config import Settings

_KEY = re.compile(r"^[0-9a-f]{64}$")


class BlobStore(Protocol):
    def put(self, data: bytes, durable: bool = True) -> str:
        """Store ``data``; returns its key (idempotent: same bytes, same key). Durable on return,
        unless ``durable`` is false: then only after the next :meth:`sync` (group commit)."""
        ...

    def sync(self) -> None:
        """Make every write made with ``durable=False`` so far durable."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key`` (raises ``BlobNotFoundError``)."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        ...

    def exists(self, key: str) -> bool: ...


class RawBlobStore(BlobStore, Protocol):
    """A blob store that also stores bytes under an address made elsewhere (a keyed hash) and lists
    its addresses: what sealing, backups and restores need."""

    def put_as(self, key: str, data: bytes, replace: bool = False, durable: bool = True) -> None:
        """Store ``data`` under ``key`` (durably, or at the next :meth:`sync`); a blob already there
        is kept unless ``replace``."""
        ...

    def stored_keys(self) -> list[str]:
        """Every stored key."""
        ...


def raw_blob_store(settings: Settings, home: Path | None = None, capture: bool = False) -> RawBlobStore:
    """The blob store of ``settings``: the object store of ``PRESCREEN_BLOB_URL`` when set, else the
    folder ``blobs`` of ``home`` (default: the settings' home).

    Args:
        capture: mirror every write into ``PRESCREEN_REPLICA_DIR/blobs`` (the folder store only: an
            object store keeps its own copies).

    Raises:
        InvalidRequestError: a malformed ``PRESCREEN_BLOB_URL``.
        BlobStoreUnavailableError: the object store cannot be reached.
    """
    if settings.blob_url:
        from prescreen.store.object_store import BlobUrl, S3BlobStore, s3_client

        return S3BlobStore(BlobUrl.parse(settings.blob_url), s3_client(settings))
    mirror = settings.replica_dir / "blobs" if capture and settings.replica_dir is not None else None
    return FileBlobStore((home or settings.home) / "blobs", mirror)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file_system(written: list[Path]) -> None:
    """Make ``written`` (files just renamed into place) and their folders durable: an fsync of each
    file, then one of each folder they are in (a folder shared by several files is synced once).

    Not ``syncfs(2)``: it would also flush every other process's dirty data on the file system, so
    its cost would depend on the neighbours, not on the group."""
    for path in written:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    for parent in sorted({path.parent for path in written}):
        _fsync_dir(parent)


class FileBlobStore:
    """Blobs as files ``<root>/<k[:2]>/<k[2:4]>/<k>``.

    Args:
        root: the folder (created if missing).
        mirror: a second folder, on another disk (``PRESCREEN_REPLICA_DIR/blobs``), written and
            fsynced with the first before ``put`` returns: the continuous capture of blobs, so a blob
            acknowledged after the last backup survives the loss of the home's disk.
    """

    def __init__(self, root: Path, mirror: Path | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.mirror = FileBlobStore(mirror) if mirror is not None else None
        self._unsynced: list[Path] = []
        self._unsynced_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise BlobNotFoundError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes, durable: bool = True) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if path.is_file() and path.stat().st_size == len(data):
            return key
        self.put_as(key, data, replace=True, durable=durable)  # absent, or cut short by an older writer's crash
        return key

    def put_as(self, key: str, data: bytes, replace: bool = False, durable: bool = True) -> None:
        """Store ``data`` under ``key`` (an address made elsewhere, e.g. a keyed hash); a file
        already there is kept unless ``replace``. Durable on return, or, with ``durable=False``,
        once :meth:`sync` returned (the mirror's copy too)."""
        if self.mirror is not None:
            self.mirror.put_as(key, data, replace, durable)
        path = self._path(key)
        if path.is_file() and not replace:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(path.parent)
        else:
            with self._unsynced_lock:
                self._unsynced.append(path)

    def sync(self) -> None:
        """Make the writes made with ``durable=False`` durable (the mirror's first)."""
        if self.mirror is not None:
            self.mirror.sync()
        with self._unsynced_lock:
            written, self._unsynced = self._unsynced, []
        sync_file_system(written)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob {key}") from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stored_keys(self) -> list[str]:
        """Every stored key (for backups and conversions)."""
        return sorted(p.name for p in self.root.glob("??/??/*") if _KEY.match(p.name))
