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
from prescreen.errors import InvalidStudyError
from prescreen.integration.fhir import diagnostic_report
from prescreen.serving.auth import Permission, needs, require
from prescreen.serving.deps import IngestorDep
from prescreen.serving.errors import error_response
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
from prescreen.store.worklist import in_worklists

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


@studies_router.post("", status_code=202, dependencies=needs(Permission.INGEST))
def upload_study(
    ingestor: IngestorDep,
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
    files (a WFDB record) become one new study. Poll ``GET /v1/studies/{study_id}``.
    """
    try:
        priority = OrderPriority.parse(order_priority)
    except ValueError as exc:
        raise InvalidStudyError(str(exc)) from None
    files = _read_uploads(file)
    limit = get_settings().max_upload_bytes
    if sum(len(v) for v in files.values()) > limit:
        return error_response(413, "too_large", f"the upload exceeds the limit of {limit} bytes")
    received = ingestor.store_upload(
        files,
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
    """Patient identifiers go to admins and to readers of a worklist the study is in; senders
    (anonymous callers) and other readers see status and results only."""
    if user is None:
        return False
    if user.is_admin:
        return True
    return in_worklists(session, study_id, user.specialties)


def _redact(session: Session, user: Principal | None, study: StudyT) -> StudyT:
    """The study, or a copy with the :data:`PATIENT_FIELDS` set to None for those who may not see them."""
    if _patient_visible(session, user, study["id"]):
        return study
    redacted = study.copy()
    redacted["patient_id"] = None
    redacted["patient_name"] = None
    return redacted


@studies_router.get("")
def search_studies(
    ingestor: IngestorDep,
    user: StudyReader,
    study_uid: str | None = None,
    status: StudyStatus | None = None,
    institution: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> StudyPage:
    """Studies, newest first, filtered by Study Instance UID, status and institution."""
    where = StudyFilter(study_uid=study_uid, status=status, institution=institution, limit=limit, offset=offset)
    with ingestor.sessions() as session:
        page = list_studies(session, where)
        return {**page, "items": [_redact(session, user, item) for item in page["items"]]}


@studies_router.get("/{study_id}")
def read_study(ingestor: IngestorDep, user: StudyReader, study_id: str) -> StudyDetail:
    """Status (received → screening → screened | failed | unscreenable) and per-series results.
    Patient identifiers only for readers of a worklist the study is in."""
    with ingestor.sessions() as session:
        return _redact(session, user, study_detail(session, study_id))


@studies_router.get("/{study_id}/fhir")
def read_study_fhir(ingestor: IngestorDep, user: StudyReader, study_id: str, request: Request) -> JSONResponse:
    """The FHIR R4 DiagnosticReport of a study, with one Observation per screened series (the
    patient named only for readers of a worklist the study is in)."""
    with ingestor.sessions() as session:
        study = get_study(session, study_id)
        summary = study_summary(study)
        if not _patient_visible(session, user, study_id):
            summary = dataclasses.replace(summary, patient_id=None, patient_name=None)
        report = diagnostic_report(summary, findings_of(session, study_id), base_url=str(request.base_url))
    return JSONResponse(report, media_type="application/fhir+json")
