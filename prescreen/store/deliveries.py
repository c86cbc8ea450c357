"""Deliveries in the database: the outbox's rows (DICOM SR, edge forwarding), claimed like jobs
(conditional update, lease; a process killed while sending leaves a delivery ``sending`` and it is
sent again after its lease). What to send and when to retry is :mod:`prescreen.pipeline.outbox`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.domain import DeliveryKind, DeliveryState, StudyStatus
from prescreen.security.audit import Actor, ActorKind, AuditEvent
from prescreen.store.audit import record_study_access
from prescreen.store.queue import changed, utcnow
from prescreen.store.schema import Delivery, Instance, Series, Study

SENDING_LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a sender holds."""

    id: str
    study_id: str
    kind: str
    destination: str
    blob_key: str | None
    attempts: int


def claim_delivery(
    sessions: sessionmaker[Session], worker: str, lease_seconds: float = SENDING_LEASE_SECONDS
) -> ClaimedDelivery | None:
    """Take the next delivery that is due (oldest first), or one whose sender's lease (``lease_seconds``
    since it was taken) expired: a sender that died, on this machine or another replica."""
    now = utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    with sessions.begin() as session:
        query = (
            select(Delivery)
            .where(
                or_(
                    and_(
                        Delivery.state == DeliveryState.PENDING,
                        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                    ),
                    and_(Delivery.state == DeliveryState.SENDING, Delivery.locked_at < stale),
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
            .values(state=DeliveryState.SENDING, locked_by=worker, locked_at=now, attempts=Delivery.attempts + 1)
        )
        return claimed if changed(taken) == 1 else None


@dataclass(frozen=True)
class DeliveryOutcome:
    """How one attempt ended: ``delivered``, back to ``pending`` until ``next_attempt_at``, or ``failed``;
    ``destination``: where it went, when not where it was queued for (an edge's standby uplink)."""

    state: DeliveryState
    error: str | None = None
    next_attempt_at: datetime | None = None
    destination: str | None = None


def finish_delivery(
    sessions: sessionmaker[Session], delivery: ClaimedDelivery, outcome: DeliveryOutcome, *, worker: str | None = None
) -> str:
    """Record an attempt's outcome (only by the lease holder, when ``worker`` is given); a
    forwarded study becomes ``forwarded``. Returns the delivery's state, or ``"taken over"``."""
    values: dict[str, object] = {"state": outcome.state, "last_error": outcome.error}
    if outcome.state == DeliveryState.DELIVERED:
        values["delivered_at"] = utcnow()
    if outcome.next_attempt_at is not None:
        values["next_attempt_at"] = outcome.next_attempt_at
    destination = outcome.destination or delivery.destination
    if destination != delivery.destination:
        values["destination"] = destination
    with sessions.begin() as session:
        mine = update(Delivery).where(Delivery.id == delivery.id)
        if worker is not None:  # only the holder of the lease records the outcome
            mine = mine.where(Delivery.state == DeliveryState.SENDING, Delivery.locked_by == worker)
        if changed(session.execute(mine.values(locked_by=None, locked_at=None, **values))) != 1:
            return "taken over"
        if delivery.kind == DeliveryKind.FORWARD and outcome.state == DeliveryState.DELIVERED:
            session.execute(update(Study).where(Study.id == delivery.study_id).values(status=StudyStatus.FORWARDED))
        if outcome.state == DeliveryState.DELIVERED:
            record_study_access(
                session,
                AuditEvent.INSTANCE_SENT,
                Actor(ActorKind.SYSTEM, "prescreen", destination[:128]),
                delivery.study_id,
                delivery.id,
                {"kind": str(delivery.kind), "attempts": delivery.attempts},
            )
    return str(outcome.state)


def retry_forwards_now(sessions: sessionmaker[Session]) -> int:
    """Make every forwarding delivery that waits for its backoff due now (an uplink answers again);
    returns how many."""
    with sessions.begin() as session:
        result = session.execute(
            update(Delivery)
            .where(
                Delivery.kind == DeliveryKind.FORWARD,
                Delivery.state == DeliveryState.PENDING,
                Delivery.next_attempt_at.is_not(None),
            )
            .values(next_attempt_at=None)
        )
        return changed(result)


def keep_delivery_blob(sessions: sessionmaker[Session], delivery_id: str, blob_key: str) -> None:
    """Remember the blob a delivery sends (its SR, made once), so every retry sends the same one."""
    with sessions.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(blob_key=blob_key))


def study_instances(session: Session, study_id: str) -> list[tuple[str, str | None]]:
    """(blob key, file name) of every instance of a study."""
    rows = session.execute(
        select(Instance.blob_key, Instance.file_name)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == study_id)
        .order_by(Series.series_uid, Instance.received_at)
    ).all()
    return [(key, name) for key, name in rows]
