"""Blobs in an S3-compatible object store (SeaweedFS, MinIO, Ceph RGW, a cloud's S3), shared by every
replica of the service.

Content-addressed as in the folder store: a blob lies at ``<prefix><k[:2]>/<k[2:4]>/<k>``. A write is
sent with its MD5 (``Content-MD5``): the store checks the bytes and answers only once they are stored,
so ``put`` returning means the store confirmed them, and the file may be acknowledged to its sender.
A store that cannot be reached, or refuses, raises :class:`~prescreen.errors.BlobStoreUnavailableError`
(HTTP 503, DICOM 0xA700): nothing is acknowledged that the store did not confirm.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from prescreen.config import Settings
from prescreen.errors import BlobNotFoundError, BlobStoreUnavailableError, InvalidRequestError

_KEY = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class BlobUrl:
    """``s3://BUCKET/PREFIX`` parsed: the bucket and a key prefix ending in ``/`` (or empty)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> BlobUrl:
        """Parse ``s3://bucket[/prefix]``.

        Raises:
            InvalidRequestError: another scheme, or a bucket name S3 does not allow.
        """
        parts = urlsplit(url)
        if parts.scheme != "s3" or not _BUCKET.match(parts.netloc):
            raise InvalidRequestError(
                f"PRESCREEN_BLOB_URL must be s3://BUCKET/PREFIX (bucket: 3-63 of a-z 0-9 . -), got {url!r}"
            )
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the settings' endpoint and credentials (short timeouts, few retries:
    a sender waits on the answer)."""
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key is not None else None
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=secret,
        region_name=settings.s3_region,
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3BlobStore:
    """The blob store interface of :class:`~prescreen.store.blobs.FileBlobStore` on an S3 bucket.

    Args:
        url: where the blobs go (``s3://bucket/prefix``).
        client: a boto3 S3 client (:func:`s3_client`).
        create: make the bucket when it does not exist (a development store; production buckets are
            made by their administrators).
    """

    def __init__(self, url: BlobUrl, client: Any, create: bool = True) -> None:
        self.url = url
        self.client = client
        try:
            client.head_bucket(Bucket=url.bucket)
        except ClientError as exc:
            if _code(exc) not in _MISSING or not create:
                raise BlobStoreUnavailableError(f"object store bucket {url.bucket}: {_code(exc)}") from exc
            self._call(client.create_bucket, Bucket=url.bucket)
        except BotoCoreError as exc:
            raise BlobStoreUnavailableError(f"object store unreachable: {type(exc).__name__}") from exc

    def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise BlobNotFoundError(f"no blob {kwargs.get('Key', '')}") from exc
            raise BlobStoreUnavailableError(f"object store refused: {_code(exc)}") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailableError(f"object store unreachable: {type(exc).__name__}") from exc

    def _object(self, key: str) -> str:
        if not _KEY.match(key):
            raise BlobNotFoundError(f"not a blob key: {key!r}")
        return f"{self.url.prefix}{key[:2]}/{key[2:4]}/{key}"

    def put(self, data: bytes, durable: bool = True) -> str:
        key = hashlib.sha256(data).hexdigest()
        self.put_as(key, data)
        return key

    def sync(self) -> None:
        """Nothing to do: every write returns once the store confirmed it."""

    def put_as(self, key: str, data: bytes, replace: bool = False, durable: bool = True) -> None:
        """Store ``data`` under ``key``; returns once the store confirmed the bytes (their MD5 checked),
        whatever ``durable`` says."""
        if not replace and self.exists(key):
            return
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self._call(self.client.put_object, Bucket=self.url.bucket, Key=self._object(key), Body=data, ContentMD5=md5)

    def get(self, key: str) -> bytes:
        answer = self._call(self.client.get_object, Bucket=self.url.bucket, Key=self._object(key))
        try:
            return bytes(answer["Body"].read())
        except BotoCoreError as exc:
            raise BlobStoreUnavailableError(f"object store read cut short: {type(exc).__name__}") from exc

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.url.bucket, Key=self._object(key))

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Bucket=self.url.bucket, Key=self._object(key))
        except BlobNotFoundError:
            return False
        return True

    def iter_keys(self) -> Iterator[str]:
        """Every stored key, page by page."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.url.bucket, Prefix=self.url.prefix)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = str(item["Key"]).rsplit("/", 1)[-1]
                    if _KEY.match(name):
                        yield name
        except (ClientError, BotoCoreError) as exc:
            raise BlobStoreUnavailableError(f"object store listing failed: {type(exc).__name__}") from exc

    def stored_keys(self) -> list[str]:
        """Every stored key (for backups and conversions)."""
        return sorted(self.iter_keys())
