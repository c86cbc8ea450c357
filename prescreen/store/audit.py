"""The audit trail in the database: append a record in the caller's transaction, sign checkpoints,
read it back for an auditor, and verify the whole chain.

:func:`record` is called inside the same transaction as the action it records, so an action and its
record commit (or roll back) together. Appending locks the chain's head row, so records are chained
one after another even with several processes on PostgreSQL. Records are never updated or deleted
here; :data:`MIN_RETENTION_DAYS` is the legal minimum (Cybersecurity Law art. 21: six months).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import get_settings
from prescreen.security.audit import (
    GENESIS,
    Actor,
    AuditEntry,
    AuditRecord,
    Checkpoint,
    Verdict,
    new_record,
    timestamp,
    verify_chain,
)
from prescreen.security.audit import AuditEvent as AuditEventKind
from prescreen.security.keys import patient_pseudonym
from prescreen.security.sm import Sm2Signer, verify_sm2
from prescreen.store.schema import Study
from prescreen.store.schema_security import AuditCheckpoint, AuditHead
from prescreen.store.schema_security import AuditEvent as AuditRow

MIN_RETENTION_DAYS = 180
_BATCH = 5000


def record(session: Session, entry: AuditEntry) -> AuditRecord:
    """Append ``entry`` to the chain in ``session``'s transaction (which the caller commits)."""
    head = session.get(AuditHead, 1, with_for_update=True)
    if head is None:  # a database made before the head row existed in the migration
        head = AuditHead(id=1, seq=0, hash=GENESIS)
        session.add(head)
        session.flush()
    made = new_record(head.seq + 1, head.hash, entry)
    session.add(AuditRow(**made.__dict__))
    head.seq, head.hash = made.seq, made.hash
    return made


def record_now(sessions: sessionmaker[Session], entry: AuditEntry) -> AuditRecord:
    """Append ``entry`` in a transaction of its own (for events with no other write: a failed
    sign-in, a read of a study)."""
    with sessions.begin() as session:
        return record(session, entry)


def _as_record(row: AuditRow) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        at=row.at,
        event=row.event,
        event_id=row.event_id,
        event_type=row.event_type,
        action=row.action,
        outcome=row.outcome,
        actor_kind=row.actor_kind,
        actor=row.actor,
        address=row.address,
        study_uid=row.study_uid,
        patient_hash=row.patient_hash,
        object_id=row.object_id,
        detail=row.detail,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def iter_records(session: Session) -> Iterator[AuditRecord]:
    """Every record in ``seq`` order, read in batches."""
    after = 0
    while batch := records_after(session, after, _BATCH):
        yield from batch
        after = batch[-1].seq


def checkpoints(session: Session) -> list[Checkpoint]:
    return [
        Checkpoint(c.seq, c.hash, c.at, c.key_id, c.signature)
        for c in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
    ]


def sign_checkpoint(sessions: sessionmaker[Session], signer: Sm2Signer) -> Checkpoint | None:
    """Sign the chain's current head, unless the newest checkpoint already covers it."""
    with sessions.begin() as session:
        head = session.get(AuditHead, 1, with_for_update=True)
        if head is None or head.seq == 0 or session.get(AuditCheckpoint, head.seq) is not None:
            return None
        unsigned = Checkpoint(head.seq, head.hash, timestamp(), signer.key_id(), "")
        signature = base64.b64encode(signer.sign(unsigned.message())).decode()
        session.add(
            AuditCheckpoint(seq=head.seq, hash=head.hash, at=unsigned.at, key_id=unsigned.key_id, signature=signature)
        )
        return Checkpoint(head.seq, head.hash, unsigned.at, unsigned.key_id, signature)


def checkpoint_signature_ok(public_pem: str, checkpoint: Checkpoint) -> bool:
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
    except ValueError:
        return False
    return verify_sm2(public_pem, checkpoint.message(), signature)


def verify(sessions: sessionmaker[Session], public_pem: str, extra_checkpoints: Sequence[Checkpoint] = ()) -> Verdict:
    """Verify the stored chain, its stored checkpoints and ``extra_checkpoints`` (kept elsewhere)."""
    with sessions() as session:
        marks = [*checkpoints(session), *extra_checkpoints]
        return verify_chain(iter_records(session), marks, lambda c: checkpoint_signature_ok(public_pem, c))


@dataclass(frozen=True)
class AuditQuery:
    """An auditor's search; every field optional."""

    actor: str | None = None
    study_uid: str | None = None
    patient_hash: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200
    offset: int = 0


def search(session: Session, query: AuditQuery) -> tuple[list[AuditRecord], int]:
    """Records matching ``query``, newest first, and how many match in all."""
    where = []
    if query.actor:
        where.append(AuditRow.actor == query.actor)
    if query.study_uid:
        where.append(AuditRow.study_uid == query.study_uid)
    if query.patient_hash:
        where.append(AuditRow.patient_hash == query.patient_hash)
    if query.event:
        where.append(AuditRow.event == query.event)
    if query.since:
        where.append(AuditRow.at >= timestamp(query.since))
    if query.until:
        where.append(AuditRow.at <= timestamp(query.until))
    total = session.scalar(select(func.count()).select_from(AuditRow).where(*where)) or 0
    rows = session.scalars(
        select(AuditRow).where(*where).order_by(AuditRow.seq.desc()).offset(query.offset).limit(query.limit)
    ).all()
    return [_as_record(r) for r in rows], total


def record_study_access(
    session: Session,
    kind: AuditEventKind,
    actor: Actor,
    study_id: str | None,
    object_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """Record an access to a study (by its row id), naming its UID and patient pseudonym."""
    study = session.get(Study, study_id) if study_id else None
    return record(
        session,
        AuditEntry(
            kind,
            actor,
            study_uid=study.study_uid if study else None,
            patient_hash=patient_pseudonym(get_settings(), study.patient_id) if study else None,
            object_id=object_id,
            detail=detail or {},
        ),
    )


def head_seq(session: Session) -> int:
    """The sequence number of the newest record (0 when the trail is empty)."""
    head = session.get(AuditHead, 1)
    return head.seq if head is not None else 0


def records_after(session: Session, seq: int, limit: int) -> list[AuditRecord]:
    """Up to ``limit`` records after ``seq``, oldest first."""
    rows = session.scalars(select(AuditRow).where(AuditRow.seq > seq).order_by(AuditRow.seq).limit(limit)).all()
    return [_as_record(r) for r in rows]
