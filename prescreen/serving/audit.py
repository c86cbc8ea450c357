"""The audit trail over HTTP, for auditors only and with a fresh second factor: ``GET /v1/audit``
searches by user, patient, study, event and time; every search is itself recorded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from prescreen.config import get_settings
from prescreen.security.audit import AuditEntry, AuditEvent, AuditRecord
from prescreen.security.keys import patient_pseudonym
from prescreen.serving.auth import Auditor, actor_of
from prescreen.serving.deps import IngestorDep
from prescreen.store.audit import AuditQuery, record, search

audit_router = APIRouter(prefix="/v1/audit", tags=["audit"])
MAX_OFFSET = 2**31 - 1


class AuditRecordOut(BaseModel):
    """One record (DICOM PS3.15 A.5 fields; the patient only as a keyed pseudonym)."""

    seq: int
    at: str = Field(description="UTC, ISO 8601")
    event: str = Field(description="prescreen's name of the event, e.g. item-read, sign-in-failed")
    event_id: str = Field(description="DICOM EventID code (DCM), e.g. 110110 Patient Record")
    event_type: str | None = Field(description="DICOM EventTypeCode (DCM), e.g. 110122 Login")
    action: str = Field(description="DICOM EventActionCode: C, R, U, D or E")
    outcome: int = Field(description="DICOM EventOutcomeIndicator: 0 success, 4 minor, 8 serious, 12 major failure")
    actor_kind: str
    actor: str = Field(description="The user's login, the client's name, or the system")
    address: str | None = Field(description="Network address (or AE@address) of the actor")
    study_uid: str | None
    patient_hash: str | None = Field(description="HMAC-SM3 pseudonym of the patient id")
    object_id: str | None
    detail: str = Field(description="JSON")
    hash: str = Field(description="SM3 chain hash of this record")


class AuditPage(BaseModel):
    items: list[AuditRecordOut]
    total: int
    limit: int
    offset: int


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def as_out(rec: AuditRecord) -> AuditRecordOut:
    return AuditRecordOut(**{k: v for k, v in rec.__dict__.items() if k != "prev_hash"})


def run_search(
    ingestor: IngestorDep, request: Request, user: Auditor, query: AuditQuery
) -> tuple[list[AuditRecord], int]:
    """Search, and record the search in the same transaction."""
    with ingestor.sessions.begin() as session:
        found, total = search(session, query)
        criteria = {k: str(v) for k, v in query.__dict__.items() if v not in (None, "") and k not in ("patient_hash",)}
        if query.patient_hash:
            criteria["patient"] = "(pseudonym)"
        record(session, AuditEntry(AuditEvent.AUDIT_READ, actor_of(request, user), detail={**criteria, "found": total}))
    return found, total


@audit_router.get("")
def read_audit(
    ingestor: IngestorDep,
    request: Request,
    user: Auditor,
    actor: Annotated[str | None, Query(alias="user", max_length=128, description="A login or client name")] = None,
    study: Annotated[str | None, Query(max_length=64, description="A Study Instance UID")] = None,
    patient: Annotated[str | None, Query(max_length=64, description="A patient id (searched by its pseudonym)")] = None,
    event: Annotated[str | None, Query(max_length=32, description="An event name, e.g. item-read")] = None,
    since: Annotated[datetime | None, Query(description="From this time (ISO 8601; UTC without offset)")] = None,
    until: Annotated[datetime | None, Query(description="Up to this time (ISO 8601; UTC without offset)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuditPage:
    """Audit records, newest first. Auditors only (403 otherwise), with a second factor given in the
    last minutes (401 ``step_up_required`` otherwise). The search itself is recorded."""
    query = AuditQuery(
        actor=actor,
        study_uid=study,
        patient_hash=patient_pseudonym(get_settings(), patient) if patient else None,
        event=event,
        since=_utc(since),
        until=_utc(until),
        limit=limit,
        offset=offset,
    )
    found, total = run_search(ingestor, request, user, query)
    return AuditPage(items=[as_out(r) for r in found], total=total, limit=limit, offset=offset)
