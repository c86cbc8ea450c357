"""The outbox step: deliveries queued in the database, sent with retry and backoff.

Kinds (:class:`~prescreen.domain.DeliveryKind`):
    ``dicom-sr``: the study's DICOM SR, sent by C-STORE to ``AE@host:port``. The SR is made
        once, kept in the blob store, and every retry sends the same SOP Instance.
    ``forward``: every instance of a study, sent to a central prescreen (edge node) by STOW-RS
        when the destination is an ``http(s)://`` URL, else by C-STORE to ``AE@host:port``. The
        receiver stores a SOP Instance UID once, so a retry after a lost answer arrives exactly
        once. With several uplinks (``PRESCREEN_FORWARD_TO=A,B``) the delivery is queued for the
        first and goes, at each attempt, to the first uplink that is up, trying the next at once
        when a send fails (:mod:`prescreen.pipeline.uplinks`); once delivered, its destination is
        the uplink that took it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.domain import DeliveryKind, DeliveryState
from prescreen.errors import DeliveryError, PrescreenError
from prescreen.integration.dicom_send import DicomDestination, c_store
from prescreen.integration.forward import stow_instances
from prescreen.integration.sr import build_sr
from prescreen.pipeline.uplinks import Uplinks, is_http, probe
from prescreen.store.blobs import BlobStore
from prescreen.store.deliveries import (
    ClaimedDelivery,
    DeliveryOutcome,
    claim_delivery,
    finish_delivery,
    keep_delivery_blob,
    retry_forwards_now,
    study_instances,
)
from prescreen.store.queue import complete_studies, utcnow, worker_name
from prescreen.store.views import findings_of

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0


def backoff_seconds(attempts: int, first: float) -> float:
    """Delay before the next try after ``attempts`` failed ones: doubling, capped at 5 minutes."""
    return float(min(first * 2.0 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS))


def delivery_outcome(
    attempts: int, error: str | None, *, max_attempts: int, first_backoff: float, permanent: bool, now: datetime
) -> DeliveryOutcome:
    """What an attempt's result means: delivered; a retry after the backoff; or given up after the
    last attempt (at once when the error is ``permanent``)."""
    if error is None:
        return DeliveryOutcome(DeliveryState.DELIVERED)
    if permanent or attempts >= max_attempts:
        return DeliveryOutcome(DeliveryState.FAILED, error)
    delay = timedelta(seconds=backoff_seconds(attempts, first_backoff))
    return DeliveryOutcome(DeliveryState.PENDING, error, now + delay)


class OutboxStep:
    """Sends one queued delivery per call; on an edge node it first queues complete studies.

    Args:
        sessions: session factory of the migrated database.
        blobs: the blob store.
        settings: attempts, backoff, ``forward_to`` (the uplinks) and how they are checked, the quiet
            period and the calling AE title.
        uplinks: the uplinks and their health (default: made from ``settings``; checked only when
            there are several, while this step runs).
    """

    def __init__(
        self, sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, uplinks: Uplinks | None = None
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.settings = settings
        self.name = worker_name()
        if uplinks is None and settings.forward_to:
            check = partial(probe, calling_ae=settings.dicom_ae_title, timeout=settings.uplink_probe_timeout_seconds)
            uplinks = Uplinks(
                settings.forward_to,
                check,
                interval=settings.uplink_probe_seconds,
                keepalive=max(10.0, 4 * settings.worker_poll_seconds),
            )
        self.uplinks = uplinks
        self._revivals = 0

    def run_once(self) -> bool:
        """``True`` when a delivery was tried."""
        if self.uplinks is not None:
            self.uplinks.keep_checking()
            revivals = self.uplinks.revivals
            if revivals != self._revivals:  # an uplink answers again: studies waiting for their backoff go now
                self._revivals = revivals
                retry_forwards_now(self.sessions)
        if self.settings.forward_to:
            complete_studies(self.sessions, self.settings.study_quiet_seconds, forward_to=self.settings.forward_to)
        delivery = claim_delivery(self.sessions, self.name, self.settings.delivery_lease_seconds)
        if delivery is None:
            return False
        error: str | None = None
        permanent = False
        sent_to: str | None = None
        try:
            sender = SENDERS.get(delivery.kind)
            if sender is None:
                raise DeliveryError(f"no sender for deliveries of kind {delivery.kind!r}")
            sent_to = sender(self, delivery)
        except DeliveryError as exc:
            error = str(exc)
        except PrescreenError as exc:  # nothing to retry: the SR cannot be made, the destination is invalid
            error, permanent = str(exc), True
        except Exception as exc:  # a bug or an unreachable peer: logged, retried
            log.error("delivery %s attempt %d failed: %s", delivery.id, delivery.attempts, type(exc).__name__)
            error = f"{type(exc).__name__} (see the service log)"
        outcome = delivery_outcome(
            delivery.attempts,
            error,
            max_attempts=self.settings.delivery_max_attempts,
            first_backoff=self.settings.delivery_backoff_seconds,
            permanent=permanent,
            now=utcnow(),
        )
        if sent_to is not None and sent_to != delivery.destination:
            outcome = replace(outcome, destination=sent_to)
        state = finish_delivery(self.sessions, delivery, outcome, worker=self.name)
        log.info(
            "delivery %s (%s) attempt %d to %s: %s",
            delivery.id,
            delivery.kind,
            delivery.attempts,
            sent_to or delivery.destination,
            state,
        )
        return True


def send_sr(outbox: OutboxStep, delivery: ClaimedDelivery) -> None:
    """Make the SR once (kept as a blob), then C-STORE it to the destination."""
    key = delivery.blob_key
    if key is None:
        with outbox.sessions() as session:
            findings = findings_of(session, delivery.study_id)
            instances = study_instances(session, delivery.study_id)
        sources = [pydicom.dcmread(io.BytesIO(outbox.blobs.get(k)), stop_before_pixels=True) for k, _ in instances]
        sources = [ds for ds in sources if "SOPInstanceUID" in ds]
        buffer = io.BytesIO()
        build_sr(sources, findings).save_as(buffer, enforce_file_format=True)
        key = outbox.blobs.put(buffer.getvalue())
        keep_delivery_blob(outbox.sessions, delivery.id, key)
    sr = pydicom.dcmread(io.BytesIO(outbox.blobs.get(key)))
    c_store([sr], DicomDestination.parse(delivery.destination), calling_ae=outbox.settings.dicom_ae_title)


def send_study(outbox: OutboxStep, delivery: ClaimedDelivery) -> str:
    """Every instance of the study, by STOW-RS to ``{uplink}/dicomweb`` or by C-STORE, to the first
    uplink that is up, then (a send failed) to the next at once; returns the uplink that took it.

    A delivery queued for a destination that is no longer an uplink (the edge was reconfigured) goes
    there, as recorded.

    Raises:
        DeliveryError: every uplink tried failed (the messages of all, in order).
    """
    with outbox.sessions() as session:
        instances = study_instances(session, delivery.study_id)
    files = [outbox.blobs.get(key) for key, _ in instances]
    calling_ae = outbox.settings.dicom_ae_title
    uplinks = outbox.uplinks
    if uplinks is None or delivery.destination not in uplinks.uplinks:
        forward_files(delivery.destination, files, calling_ae)
        return delivery.destination
    tried: list[str] = []
    errors: list[str] = []
    while (uplink := uplinks.next_to_try(tried)) is not None:
        tried.append(uplink)
        try:
            uplinks.run_watched(uplink, partial(forward_files, uplink, files, calling_ae))
        except DeliveryError as exc:
            uplinks.record_send(uplink, ok=False)
            errors.append(str(exc))
            continue
        uplinks.record_send(uplink, ok=True)
        if errors:
            log.warning("delivery %s went to uplink %s after %d failed", delivery.id, uplink, len(errors))
        return uplink
    raise DeliveryError("; ".join(errors))


def forward_files(destination: str, files: Sequence[bytes], calling_ae: str) -> None:
    """DICOM Part 10 files by STOW-RS to ``{destination}/dicomweb`` (an ``http(s)://`` URL) or by
    C-STORE to ``AE@host:port``.

    Raises:
        DeliveryError: the destination did not take them all.
    """
    if is_http(destination):
        stow_instances(destination, files)
    else:
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
        c_store(datasets, DicomDestination.parse(destination), calling_ae=calling_ae)


Sender = Callable[[OutboxStep, ClaimedDelivery], str | None]
"""Sends a delivery; returns where it went when that is not the delivery's recorded destination."""
SENDERS: Mapping[str, Sender] = {DeliveryKind.DICOM_SR: send_sr, DeliveryKind.FORWARD: send_study}
