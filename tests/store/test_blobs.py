"""The blob store: content addressing, durability path, idempotence, bad keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from prescreen.store.blobs import BlobNotFoundError, FileBlobStore


def test_put_get_delete(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    key = store.put(b"DICM study bytes")
    assert key == hashlib.sha256(b"DICM study bytes").hexdigest()
    assert store.exists(key) and store.get(key) == b"DICM study bytes"
    assert (tmp_path / "blobs" / key[:2] / key[2:4] / key).is_file()
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(BlobNotFoundError):
        store.get(key)
    store.delete(key)  # deleting twice is fine


def test_same_bytes_same_key_stored_once(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    assert store.put(b"x" * 1000) == store.put(b"x" * 1000)
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1
    assert not list(tmp_path.rglob(".incoming-*"))


def test_a_truncated_blob_is_rewritten(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    key = store.put(b"complete content")
    path = tmp_path / key[:2] / key[2:4] / key
    path.write_bytes(b"compl")  # e.g. a crash of an older writer
    assert store.put(b"complete content") == key
    assert store.get(key) == b"complete content"


@pytest.mark.parametrize("key", ["../../etc/passwd", "abc", "G" * 64])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(BlobNotFoundError, match="not a blob key"):
        FileBlobStore(tmp_path).get(key)
