"""Blobs in an S3-compatible object store (``prescreen.store.object_store``), against a real
SeaweedFS started by the test: content-addressed under the URL's prefix, sealed at rest, nothing
acknowledged while the store is down, and a backup drill whose blobs come from and go back to it."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from prescreen.config import Settings
from prescreen.errors import BlobNotFoundError, BlobStoreUnavailableError, InvalidRequestError
from prescreen.pipeline.runtime import open_store
from prescreen.security import envelope
from prescreen.store.blobs import raw_blob_store
from prescreen.store.object_store import BlobUrl, S3BlobStore, s3_client
from prescreen.store.schema import Instance
from tests.fixtures_dicom import make_instance
from tests.pg_cluster import free_port
from tests.seaweed import SeaweedServer, SeaweedUnavailableError
from tests.store.test_backup import _check_restored as check_restored
from tests.store.test_backup import dispose, make_drill, restore_into, state_of, use_home

BUCKET = "prescreen-test"


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedServer]:
    try:
        server = SeaweedServer()
    except SeaweedUnavailableError as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def s3_settings(endpoint: str, prefix: str | None = None) -> Settings:
    return Settings(
        blob_url=f"s3://{BUCKET}/{prefix or uuid.uuid4().hex}",
        s3_endpoint=endpoint,
        s3_access_key="prescreen",
        s3_secret_key="not-checked-by-an-open-seaweedfs",  # type: ignore[arg-type]
    )


def use_object_store(monkeypatch: pytest.MonkeyPatch, endpoint: str, prefix: str) -> None:
    monkeypatch.setenv("PRESCREEN_BLOB_URL", f"s3://{BUCKET}/{prefix}")
    monkeypatch.setenv("PRESCREEN_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("PRESCREEN_S3_ACCESS_KEY", "prescreen")
    monkeypatch.setenv("PRESCREEN_S3_SECRET_KEY", "not-checked-by-an-open-seaweedfs")


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://prescreen", "prescreen", ""),
        ("s3://prescreen/", "prescreen", ""),
        ("s3://pacs.blobs/site-a/2026", "pacs.blobs", "site-a/2026/"),
    ],
)
def test_a_blob_url_names_a_bucket_and_a_prefix(url: str, bucket: str, prefix: str) -> None:
    assert BlobUrl.parse(url) == BlobUrl(bucket, prefix)


@pytest.mark.parametrize("url", ["/var/blobs", "file:///var/blobs", "s3://", "s3://ab/x", "s3://Upper/x", "gs://b/x"])
def test_a_blob_url_that_is_not_s3_is_refused_with_the_expected_form(url: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"s3://BUCKET/PREFIX"):
        BlobUrl.parse(url)


def test_blobs_are_stored_by_content_under_the_prefix(seaweed: SeaweedServer) -> None:
    settings = s3_settings(seaweed.endpoint, "site-a")
    store = raw_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    key = store.put(b"a DICOM file")
    assert store.put(b"a DICOM file") == key  # same bytes, same key, stored once
    other = store.put(b"another")
    assert store.get(key) == b"a DICOM file" and store.exists(key) and not store.exists("0" * 64)
    listed = s3_client(settings).list_objects_v2(Bucket=BUCKET, Prefix="site-a/")["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(f"site-a/{k[:2]}/{k[2:4]}/{k}" for k in (key, other))
    assert store.stored_keys() == sorted([key, other])
    store.put_as(key, b"kept")  # an address already there is kept ...
    assert store.get(key) == b"a DICOM file"
    store.put_as(key, b"replaced", replace=True)  # ... unless replaced
    assert store.get(key) == b"replaced"
    store.delete(key)
    with pytest.raises(BlobNotFoundError):
        store.get(key)
    with pytest.raises(BlobNotFoundError, match="not a blob key"):
        store.get("../../etc/passwd")


def test_an_object_store_that_cannot_be_reached_is_refused_at_open() -> None:
    with pytest.raises(BlobStoreUnavailableError, match="unreachable"):
        raw_blob_store(s3_settings(f"http://127.0.0.1:{free_port()}"))


def test_nothing_is_acknowledged_while_the_object_store_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SeaweedServer() as server:
        use_object_store(monkeypatch, server.endpoint, "down")
        settings = use_home(monkeypatch, tmp_path / "home", tmp_path / "vault" / "master.key")
        ingestor = open_store(settings)
        try:
            first = make_instance("CR")
            stored = ingestor.store_dicom(_bytes(first), sender="CLINIC")
            server.kill()
            with pytest.raises(BlobStoreUnavailableError):
                ingestor.store_dicom(_bytes(make_instance("CR")), sender="CLINIC")
            with ingestor.sessions() as session:
                assert session.scalar(select(func.count()).select_from(Instance)) == 1  # only the first
            server.start()  # the same store again: what it confirmed is there
            with ingestor.sessions() as session:
                key = session.scalars(select(Instance.blob_key)).one()
            assert stored.sop_instance_uid == first.SOPInstanceUID
            assert str(first.SOPInstanceUID).encode() in ingestor.blobs.get(key)
        finally:
            dispose(ingestor)


def test_a_backup_drill_with_the_blobs_in_the_object_store(
    seaweed: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_object_store(monkeypatch, seaweed.endpoint, "drill-home")
    drill = make_drill(tmp_path, monkeypatch)
    home_store = raw_blob_store(s3_settings(seaweed.endpoint, "drill-home"))
    assert home_store.stored_keys() == drill.incremental_state["blob_files"]
    assert all(envelope.is_sealed(home_store.get(key)) for key in home_store.stored_keys())  # sealed at rest
    assert not (tmp_path / "home" / "blobs").exists() or not any((tmp_path / "home" / "blobs").rglob("*"))

    use_object_store(monkeypatch, seaweed.endpoint, "drill-restored")  # the lost store: a new, empty one
    settings, ingestor = restore_into(drill, monkeypatch, tmp_path / "restored")
    try:
        check_restored(drill, settings, ingestor, drill.incremental_state)
        restored = raw_blob_store(s3_settings(seaweed.endpoint, "drill-restored"))
        assert restored.stored_keys() == drill.incremental_state["blob_files"]
        assert state_of(ingestor)["blobs"] == drill.incremental_state["blobs"]
    finally:
        dispose(ingestor)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
