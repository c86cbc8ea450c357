"""DICOMweb STOW-RS (PS3.18 §10.5): ``POST /dicomweb/studies[/{study_uid}]`` stores DICOM instances.

Each part is stored on its own: a part that is not DICOM (Failure Reason 0xC000), that belongs to
another study than the one in the URL (0xA900) or that the store cannot take (0xA700) fails alone and
is listed in the response; the others are stored. The answer is the Store Instances Response in
``application/dicom+json`` with 200 (all stored), 202 (some failed) or 409 (none stored); a request that
is not ``multipart/related; type="application/dicom"`` is refused with 415 before its body is read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from prescreen.errors import InvalidStudyError, ServiceUnavailableError
from prescreen.integration.stow import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    FailedRef,
    StoredRef,
    multipart_boundary,
    parse_multipart_related,
    store_response,
    stow_status,
)
from prescreen.security.audit import Actor
from prescreen.serving.auth import Permission, Principal, actor_of, require
from prescreen.serving.deps import IngestorDep
from prescreen.store.ingest import Ingestor, InstanceMeta, dicom_meta

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
SENDER = "STOW-RS"
PREAMBLE = bytes(128) + b"DICM"


def as_part10(part: bytes) -> bytes:
    """A part as a DICOM Part 10 file: one that opens with its File Meta Information (group 0002)
    but lacks the 128-byte preamble and ``DICM`` prefix (what ``pydicom.dcmwrite`` gives for an
    in-memory dataset, and so what e.g. dicomweb-client sends) gets them; any other part is unchanged.

    Args:
        part: the payload of one multipart part.
    """
    if part[128:132] != b"DICM" and part.startswith(b"\x02\x00"):
        return PREAMBLE + part
    return part


#: every STOW-RS route needs the ``ingest`` permission
dicomweb_router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
Sender = Annotated[Principal | None, Depends(require(Permission.INGEST))]

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": 'DICOM Part 10 instances as multipart/related; type="application/dicom"',
        "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"description": text, "content": {DICOM_JSON: {}}}
    for code, text in (
        (200, "all instances stored"),
        (202, "some instances stored, some failed (FailedSOPSequence)"),
        (409, "no instance stored (FailedSOPSequence)"),
    )
}


def store_parts(
    ingestor: Ingestor,
    parts: Sequence[bytes],
    study_uid: str | None,
    actor: Actor | None = None,
    institution: str | None = None,
) -> tuple[list[StoredRef], list[FailedRef]]:
    """Store the parts together (one group commit), each with its own outcome: a failing part does
    not stop the others. Each header is parsed once.

    Args:
        ingestor: where the instances go.
        parts: the DICOM Part 10 payloads of the request.
        study_uid: the study named in the URL; instances of another study fail (0xA900).
        actor: who sends (the audit trail's participant).
        institution: the sending client's institution, stamped on new studies.
    """
    stored: list[StoredRef] = []
    failed: list[FailedRef] = []
    accepted: list[tuple[int, bytes, InstanceMeta]] = []
    for index, sent in enumerate(parts, start=1):
        part = as_part10(sent)
        try:
            meta = dicom_meta(part, sender=SENDER, institution=institution)
        except InvalidStudyError:
            log.info("STOW-RS part %d of %d is not a readable DICOM instance", index, len(parts))
            failed.append(FailedRef(None, None, CANNOT_UNDERSTAND))
            continue
        if study_uid is not None and meta.study_uid != study_uid:
            log.info("STOW-RS part %d of %d belongs to another study than the URL's", index, len(parts))
            failed.append(FailedRef(meta.sop_class_uid, meta.sop_instance_uid, DATASET_DOES_NOT_MATCH))
            continue
        accepted.append((index, part, meta))
    outcomes = ingestor.store_dicoms([(part, meta) for _, part, meta in accepted], actor=actor)
    for (index, _, meta), outcome in zip(accepted, outcomes, strict=True):
        if isinstance(outcome, InvalidStudyError):
            failed.append(FailedRef(meta.sop_class_uid, meta.sop_instance_uid, CANNOT_UNDERSTAND))
        elif isinstance(outcome, OSError | SQLAlchemyError | ServiceUnavailableError):
            log.error("STOW-RS part %d of %d could not be stored: %s", index, len(parts), type(outcome).__name__)
            failed.append(FailedRef(meta.sop_class_uid, meta.sop_instance_uid, OUT_OF_RESOURCES))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            ref = StoredRef(meta.sop_class_uid, outcome.sop_instance_uid, outcome.study_uid, outcome.series_uid)
            stored.append(ref)
    return stored, failed


async def _stow(request: Request, ingestor: Ingestor, study_uid: str | None, user: Principal | None) -> Response:
    content_type = request.headers.get("content-type", "")
    multipart_boundary(content_type)  # 415 before the body is read
    body = await request.body()
    parts = await run_in_threadpool(parse_multipart_related, content_type, body)
    institution = user.institutions[0] if user is not None and len(user.institutions) == 1 else None
    stored, failed = await run_in_threadpool(
        store_parts, ingestor, parts, study_uid, actor_of(request, user), institution
    )
    log.info("STOW-RS: %d instance(s) stored, %d failed", len(stored), len(failed))
    content = store_response(stored, failed, f"{request.base_url}dicomweb")
    return Response(json.dumps(content), status_code=stow_status(len(stored), len(failed)), media_type=DICOM_JSON)


@dicomweb_router.post("/studies", response_class=Response, openapi_extra=_REQUEST_BODY, responses=_RESPONSES)
async def store_instances(request: Request, ingestor: IngestorDep, user: Sender) -> Response:
    """Store DICOM instances of any studies (STOW-RS)."""
    return await _stow(request, ingestor, None, user)


@dicomweb_router.post(
    "/studies/{study_uid}", response_class=Response, openapi_extra=_REQUEST_BODY, responses=_RESPONSES
)
async def store_study_instances(request: Request, ingestor: IngestorDep, study_uid: str, user: Sender) -> Response:
    """Store DICOM instances of the study ``study_uid`` (STOW-RS); instances of other studies fail."""
    return await _stow(request, ingestor, study_uid, user)
