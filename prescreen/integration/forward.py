"""Forwarding from an edge node to the central service over DICOMweb STOW-RS (dicomweb-client)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from prescreen.errors import DeliveryError

FAILED_SOP_SEQUENCE = "FailedSOPSequence"
READY_PATH = "/readyz"


def service_ready(base_url: str, *, timeout: float = 1.0) -> bool:
    """Whether the central service at ``base_url`` answers ``GET /readyz`` with 200 within ``timeout``
    seconds (models loaded, store open: it can take a study now). A refused or silent connection, an
    error answer or 503 "starting" is ``False``; nothing is raised."""
    try:
        response = requests.get(base_url.rstrip("/") + READY_PATH, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return response.status_code == 200


def stow_instances(base_url: str, instances: Sequence[bytes], *, timeout: float = 60.0) -> int:
    """Send DICOM Part 10 files to ``{base_url}/dicomweb/studies``; returns how many were stored.

    Raises:
        DeliveryError: the service is unreachable, answers with an error, or refuses an instance.
    """
    if not instances:
        raise DeliveryError("the study has no instance to forward")
    try:
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in instances]
    except Exception as exc:
        raise DeliveryError(f"an instance of the study is not DICOM and cannot go by STOW-RS: {exc}") from exc
    client = DICOMwebClient(url=base_url.rstrip("/") + "/dicomweb", timeout=timeout)
    client.set_http_retry_params(retry=False)  # the outbox retries, with its own backoff and log
    try:
        response = client.store_instances(datasets)
    except requests.RequestException as exc:
        raise DeliveryError(f"STOW-RS to {base_url} failed: {exc}") from exc
    failed = response.get(FAILED_SOP_SEQUENCE) if response is not None else None
    if failed:
        raise DeliveryError(f"STOW-RS to {base_url}: {len(failed)} of {len(datasets)} instances refused")
    return len(datasets)
