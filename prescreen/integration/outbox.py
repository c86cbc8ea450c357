"""The durable outbox: deliveries queued in the database, sent with retry and backoff.

Kinds:
    ``dicom-sr``: the study's DICOM SR, sent by C-STORE to ``AE@host:port``. The SR is made
        once, kept in the blob store, and every retry sends the same SOP Instance.
    ``forward``: every instance of a study, sent to a central prescreen (edge node) by STOW-RS
        when the destination is an ``http(s)://`` URL, else by C-STORE to ``AE@host:port``. The
        receiver stores a SOP Instance UID once, so a retry after a lost answer arrives exactly
        once.

A delivery is claimed like a job (conditional update, lease); a process killed while sending
leaves it ``sending`` and it is sent again after its lease.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import pydicom
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.errors import DeliveryError, PrescreenError
from prescreen.store.blobs import BlobStore
from prescreen.store.queue import changed, complete_studies, utcnow, worker_name
from prescreen.store.schema import Delivery, Instance, Series, Study

log = logging.getLogger(__name__)

PENDING, SENDING, DELIVERED, GAVE_UP = "pending", "sending", "delivered", "failed"
MAX_BACKOFF_SECONDS = 300.0
SENDING_LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    study_id: str
    kind: str
    destination: str
    blob_key: str | None
    attempts: int


Sender = Callable[["Outbox", ClaimedDelivery], None]


def backoff_seconds(attempts: int, first: float) -> float:
    """Delay before the next try after ``attempts`` failed ones: doubling, capped at 5 minutes."""
    return float(min(first * 2.0 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS))


def claim_delivery(sessions: sessionmaker[Session], worker: str) -> ClaimedDelivery | None:
    now = utcnow()
    stale = now - timedelta(seconds=SENDING_LEASE_SECONDS)
    with sessions.begin() as session:
        query = (
            select(Delivery)
            .where(
                or_(
                    and_(
                        Delivery.state == PENDING,
                        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                    ),
                    and_(Delivery.state == SENDING, Delivery.locked_at < stale),
                )
            )
            .order_by(Delivery.created_at)
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = session.scalars(query).first()
        if row is None:
            return None
        claimed = ClaimedDelivery(row.id, row.study_id, row.kind, row.destination, row.blob_key, row.attempts + 1)
        taken = session.execute(
            update(Delivery)
            .where(Delivery.id == row.id, Delivery.state == row.state, Delivery.attempts == row.attempts)
            .values(state=SENDING, locked_by=worker, locked_at=now, attempts=Delivery.attempts + 1)
        )
        return claimed if changed(taken) == 1 else None


def finish_delivery(
    sessions: sessionmaker[Session],
    delivery: ClaimedDelivery,
    error: str | None,
    settings: Settings,
    *,
    permanent: bool = False,
    worker: str | None = None,
) -> str:
    """Mark a delivery sent, or schedule its retry, or give it up after the last attempt (at once
    when the error is ``permanent``)."""
    now = utcnow()
    values: dict[str, object]
    if error is None:
        values = {"state": DELIVERED, "delivered_at": now, "last_error": None}
    elif permanent or delivery.attempts >= settings.delivery_max_attempts:
        values = {"state": GAVE_UP, "last_error": error}
    else:
        delay = backoff_seconds(delivery.attempts, settings.delivery_backoff_seconds)
        values = {"state": PENDING, "last_error": error, "next_attempt_at": now + timedelta(seconds=delay)}
    with sessions.begin() as session:
        mine = update(Delivery).where(Delivery.id == delivery.id)
        if worker is not None:  # only the holder of the lease records the outcome
            mine = mine.where(Delivery.state == SENDING, Delivery.locked_by == worker)
        if changed(session.execute(mine.values(locked_by=None, locked_at=None, **values))) != 1:
            return "taken over"
        if delivery.kind == "forward" and error is None:
            session.execute(update(Study).where(Study.id == delivery.study_id).values(status="forwarded"))
    return str(values["state"])


def study_instances(session: Session, study_id: str) -> list[tuple[str, str | None]]:
    """(blob key, file name) of every instance of a study."""
    rows = session.execute(
        select(Instance.blob_key, Instance.file_name)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == study_id)
        .order_by(Series.series_uid, Instance.received_at)
    ).all()
    return [(key, name) for key, name in rows]


def send_sr(outbox: Outbox, delivery: ClaimedDelivery) -> None:
    """Make the SR once (kept as a blob), then C-STORE it to the destination."""
    from prescreen.integration.dicom_send import DicomDestination, c_store
    from prescreen.integration.sr import build_sr
    from prescreen.store.views import findings_of

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
        with outbox.sessions.begin() as session:
            session.execute(update(Delivery).where(Delivery.id == delivery.id).values(blob_key=key))
    sr = pydicom.dcmread(io.BytesIO(outbox.blobs.get(key)))
    c_store([sr], DicomDestination.parse(delivery.destination), calling_ae=outbox.settings.dicom_ae_title)


def send_study(outbox: Outbox, delivery: ClaimedDelivery) -> None:
    """Every instance of the study, by STOW-RS to ``{destination}/dicomweb`` or by C-STORE."""
    from prescreen.integration.dicom_send import DicomDestination, c_store
    from prescreen.integration.forward import stow_instances

    with outbox.sessions() as session:
        instances = study_instances(session, delivery.study_id)
    files = [outbox.blobs.get(key) for key, _ in instances]
    if delivery.destination.startswith(("http://", "https://")):
        stow_instances(delivery.destination, files)
    else:
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
        c_store(datasets, DicomDestination.parse(delivery.destination), calling_ae=outbox.settings.dicom_ae_title)


SENDERS: Mapping[str, Sender] = {"dicom-sr": send_sr, "forward": send_study}


class Outbox:
    """Sends queued deliveries until stopped; on an edge node it also queues complete studies.

    Args:
        sessions: session factory of the migrated database.
        blobs: the blob store.
        settings: attempts, backoff, ``forward_to`` and the quiet period.
    """

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.settings = settings
        self.name = worker_name()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """Queue complete studies (edge node), then send one delivery; ``True`` when one was tried."""
        if self.settings.forward_to:
            complete_studies(self.sessions, self.settings.study_quiet_seconds, forward_to=self.settings.forward_to)
        delivery = claim_delivery(self.sessions, self.name)
        if delivery is None:
            return False
        sender = SENDERS.get(delivery.kind)
        error: str | None = None
        permanent = False
        try:
            if sender is None:
                raise DeliveryError(f"no sender for deliveries of kind {delivery.kind!r}")
            sender(self, delivery)
        except DeliveryError as exc:
            error = str(exc)
        except PrescreenError as exc:  # nothing to retry: the SR cannot be made, the destination is invalid
            error, permanent = str(exc), True
        except Exception as exc:  # a bug or an unreachable peer: logged, retried
            log.error("delivery %s attempt %d failed: %s", delivery.id, delivery.attempts, type(exc).__name__)
            error = f"{type(exc).__name__} (see the service log)"
        state = finish_delivery(self.sessions, delivery, error, self.settings, permanent=permanent, worker=self.name)
        log.info("delivery %s (%s) attempt %d: %s", delivery.id, delivery.kind, delivery.attempts, state)
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:
                log.error("outbox step failed: %s", type(exc).__name__)
                busy = False
            if not busy:
                self._stop.wait(self.settings.worker_poll_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
