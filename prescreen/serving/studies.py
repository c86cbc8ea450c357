"""Studies over HTTP: upload (202 at once, screened by the queue), list, one study, its FHIR report."""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from prescreen.config import get_settings
from prescreen.domain import ORDER_PRIORITY_ALIASES, OrderPriority, StudyStatus
from prescreen.errors import ForbiddenError, InvalidStudyError, NotFoundError
from prescreen.integration.fhir import diagnostic_report
from prescreen.security.audit import AuditEntry, AuditEvent
from prescreen.security.keys import patient_pseudonym
from prescreen.security.masking import mask_id, mask_name
from prescreen.security.roles import Role
from prescreen.serving.auth import Permission, actor_of, require
from prescreen.serving.deps import IngestorDep
from prescreen.serving.errors import error_response
from prescreen.store.audit import record_now, record_study_access
from prescreen.store.users import Principal
from prescreen.store.views import (
    StudyDetail,
    StudyFilter,
    StudyPage,
    StudyRow,
    findings_of,
    get_study,
    list_studies,
    study_detail,
    study_summary,
)
from prescreen.store.worklist import in_worklists, with_patient

studies_router = APIRouter(prefix="/v1/studies", tags=["studies"])

MAX_OFFSET = 2**31 - 1
"""The largest page offset (a database integer); larger is a 422, never a 500."""
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _read_uploads(uploads: list[UploadFile]) -> dict[str, bytes]:
    limit = get_settings().max_upload_bytes
    files: dict[str, bytes] = {}
    for upload in uploads:
        name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
        if not name:
            raise InvalidStudyError("every uploaded file needs a file name")
        if len(name) > 128 or not SAFE_NAME.fullmatch(name):
            raise InvalidStudyError("a file name must be 1-128 letters, digits, '.', '_' or '-'")
        if name in files:
            raise InvalidStudyError("the same file name was sent twice")
        files[name] = upload.file.read(limit + 1)
        if not files[name]:
            raise InvalidStudyError("an uploaded file is empty")
    return files


Sender = Annotated[Principal | None, Depends(require(Permission.INGEST))]


@studies_router.post("", status_code=202)
def upload_study(
    ingestor: IngestorDep,
    request: Request,
    user: Sender,
    file: Annotated[list[UploadFile], File(description="A WFDB record (.hea with .dat/.mat) or DICOM files")],
    patient_id: Annotated[str | None, Form(max_length=64)] = None,
    patient_name: Annotated[str | None, Form(max_length=128)] = None,
    institution: Annotated[str | None, Form(max_length=128)] = None,
    order_priority: Annotated[
        str | None,
        Form(
            max_length=16,
            description=f"One of {', '.join(ORDER_PRIORITY_ALIASES)} (DICOM Requested Procedure Priority or HL7 "
            "table 0027); stored as one of " + ", ".join(OrderPriority),
        ),
    ] = None,
) -> Any:
    """Store a study and queue it for screening; answers 202 once the files are durable.

    DICOM files are filed by their own UIDs (several studies may come in one upload); other
    files (a WFDB record) become one new study. Poll ``GET /v1/studies/{study_id}``. A machine
    client's studies are stamped with its institution (the ``institution`` field is ignored), as are
    those of a user who serves exactly one.
    """
    try:
        priority = OrderPriority.parse(order_priority)
    except ValueError as exc:
        raise InvalidStudyError(str(exc)) from None
    files = _read_uploads(file)
    limit = get_settings().max_upload_bytes
    if sum(len(v) for v in files.values()) > limit:
        return error_response(413, "too_large", f"the upload exceeds the limit of {limit} bytes")
    if user is not None and len(user.institutions) == 1:
        institution = user.institutions[0]
    elif user is not None and user.institutions and institution not in user.institutions:
        raise ForbiddenError(f"institution {institution!r} is not one you send for ({', '.join(user.institutions)})")
    received = ingestor.store_upload(
        files,
        actor=actor_of(request, user),
        sender="http",
        institution=institution,
        patient_id=patient_id,
        patient_name=patient_name,
        order_priority=priority,
    )
    study_ids = list(dict.fromkeys(r.study_id for r in received))
    return {
        "study_id": study_ids[0],
        "study_ids": study_ids,
        "study_uid": received[0].study_uid,
        "status": StudyStatus.RECEIVED,
        "instances": len(received),
        "duplicates": sum(r.duplicate for r in received),
    }


StudyReader = Annotated[Principal | None, Depends(require(Permission.STUDIES_READ))]
PATIENT_FIELDS = ("patient_id", "patient_name")
StudyT = TypeVar("StudyT", bound=StudyRow)


def _patient_visible(session: Session, user: Principal | None, study_id: str) -> bool:
    """Patient identifiers, masked (张*丰, *****2345), go to readers of a worklist the study is in;
    senders (clients, anonymous callers) and everyone else see status and results only. The full
    values are on the worklist item, for the reader holding its claim."""
    if user is None or Role.READER not in user.roles:
        return False
    return in_worklists(session, study_id, user.specialties)


def _in_scope(user: Principal | None, study: StudyRow) -> bool:
    return user is None or user.serves(study["institution"])


def _redact(session: Session, user: Principal | None, study: StudyT) -> StudyT:
    """A copy with the :data:`PATIENT_FIELDS` masked for readers of the study, None for everyone else."""
    if _patient_visible(session, user, study["id"]):
        return with_patient(study, full=False)
    redacted = study.copy()
    redacted["patient_id"] = None
    redacted["patient_name"] = None
    return redacted


@studies_router.get("")
def search_studies(
    ingestor: IngestorDep,
    user: StudyReader,
    request: Request,
    study_uid: str | None = None,
    status: StudyStatus | None = None,
    institution: str | None = None,
    patient_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> StudyPage:
    """Studies, newest first, filtered by Study Instance UID, status, institution (a client or a
    user of some institutions sees theirs only) and patient id. Patient ids are stored sealed: the
    lookup goes through their blind index (HMAC-SM3), and every lookup by patient is audited."""
    if user is not None and user.institutions:
        if institution is not None and institution not in user.institutions:
            return {"items": [], "total": 0, "limit": limit, "offset": offset}
        scope = [institution] if institution else list(user.institutions)
    else:
        scope = [institution] if institution else []
    index = patient_pseudonym(get_settings(), patient_id.strip()) if patient_id else None
    where = StudyFilter(
        study_uid=study_uid, status=status, patient_index=index, institutions=scope, limit=limit, offset=offset
    )
    with ingestor.sessions() as session:
        page = list_studies(session, where)
        items = [_redact(session, user, item) for item in page["items"]]
    if index is not None:
        detail = {"as": "search by patient", "found": page["total"]}
        record_now(
            ingestor.sessions,
            AuditEntry(AuditEvent.STUDY_READ, actor_of(request, user), patient_hash=index, detail=detail),
        )
    return {**page, "items": items}


@studies_router.get("/{study_id}")
def read_study(ingestor: IngestorDep, request: Request, user: StudyReader, study_id: str) -> StudyDetail:
    """Status (received → screening → screened | failed | unscreenable) and per-series results.
    Patient identifiers (masked) only for readers of a worklist the study is in; 404 outside the
    caller's institutions. Every read is audited."""
    with ingestor.sessions.begin() as session:
        detail = study_detail(session, study_id)
        if not _in_scope(user, detail):
            raise NotFoundError(f"no study {study_id!r}")
        record_study_access(session, AuditEvent.STUDY_READ, actor_of(request, user), study_id, study_id)
        return _redact(session, user, detail)


@studies_router.get("/{study_id}/fhir")
def read_study_fhir(ingestor: IngestorDep, user: StudyReader, study_id: str, request: Request) -> JSONResponse:
    """The FHIR R4 DiagnosticReport of a study, with one Observation per screened series (the
    patient named only for readers of a worklist the study is in)."""
    with ingestor.sessions.begin() as session:
        study = get_study(session, study_id)
        if user is not None and not user.serves(study.institution):
            raise NotFoundError(f"no study {study_id!r}")
        summary = study_summary(study)
        if _patient_visible(session, user, study_id):
            summary = dataclasses.replace(
                summary, patient_id=mask_id(summary.patient_id), patient_name=mask_name(summary.patient_name)
            )
        else:
            summary = dataclasses.replace(summary, patient_id=None, patient_name=None)
        record_study_access(session, AuditEvent.EXPORT, actor_of(request, user), study_id, study_id, {"as": "fhir"})
        report = diagnostic_report(summary, findings_of(session, study_id), base_url=str(request.base_url))
    return JSONResponse(report, media_type="application/fhir+json")
