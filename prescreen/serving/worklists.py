"""Readers over HTTP: sign in, worklists of one's specialties, an item with its reports, the review
actions, and turnaround statistics. The pages (``/ui``) call the same functions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from prescreen.config import get_settings
from prescreen.errors import NotFoundError
from prescreen.security.audit import AuditEvent
from prescreen.serving.auth import Reader, StatsReader, Writer, actor_of, check_fresh
from prescreen.serving.deps import IngestorDep, claim_lease, get_targets
from prescreen.serving.schemas import AgreementStats, TurnaroundStats, WorklistPage, WorklistsOut
from prescreen.store.agreement import ReviewAgreement, review_agreement
from prescreen.store.audit import record_study_access
from prescreen.store.reading import DraftText, ItemDetail, act, item_detail
from prescreen.store.signing import SignedReport, signed_report
from prescreen.store.sla import ai_agreement_stats, turnaround_stats
from prescreen.store.worklist import check_access, count_open, list_worklist, load_item

worklists_router = APIRouter(prefix="/v1", tags=["worklists"])

ACTIONS = ("claim", "release", "sign", "amend")


class DraftBody(BaseModel):
    text: str = Field(description="The report text")
    ai_agrees: bool | None = Field(None, description="Whether the reader agrees with the AI flag")
    physician_label: str | None = Field(
        None,
        max_length=64,
        description="The reader's own label of the study: one of the item's label_choices (the task's classes, "
        "or 'not assessable'); needed to submit the report of a screened study (400 when not a choice)",
    )


class SignBody(BaseModel):
    text_sha256: str | None = Field(
        None, description="SHA-256 of the report text the signer read (from the item's reports); 409 if it changed"
    )


class ReturnBody(BaseModel):
    comment: str = Field(min_length=1, description="What the first reader should change")


@worklists_router.get("/worklists")
def my_worklists(ingestor: IngestorDep, user: Reader) -> WorklistsOut:
    """The worklists of the user's specialties with their open item counts."""
    with ingestor.sessions() as session:
        return {
            "worklists": [{"worklist": w, "open": count_open(session, w, user.institutions)} for w in user.specialties]
        }


@worklists_router.get("/worklists/{specialty}")
def worklist(
    ingestor: IngestorDep, user: Reader, specialty: str, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> WorklistPage:
    """Open items of the user's institutions, most urgent first (effective priority aged by time to
    due, AI score, waiting time). Patient names and ids are masked except on the items the user claimed."""
    check_access(user, specialty)
    with ingestor.sessions() as session:
        items = list_worklist(
            session, specialty, get_targets(), limit=limit, institutions=user.institutions, viewer_id=user.id
        )
        return {"worklist": specialty, "items": items, "total": count_open(session, specialty, user.institutions)}


@worklists_router.get("/worklist-items/{item_id}")
def worklist_item(ingestor: IngestorDep, request: Request, user: Reader, item_id: str) -> ItemDetail:
    """An item: state, study, AI result, report versions with signatures, escalations, history. The
    patient in full only for the claimant, the first reader and the signers. Every read is audited."""
    with ingestor.sessions.begin() as session:
        detail = item_detail(session, item_id, user, get_targets())
        record_study_access(session, AuditEvent.ITEM_READ, actor_of(request, user), detail["study_id"], item_id)
        return detail


@worklists_router.get("/worklist-items/{item_id}/report/{version}")
def signed_report_version(
    ingestor: IngestorDep, request: Request, user: Reader, item_id: str, version: Annotated[int, Path(ge=1, le=10_000)]
) -> SignedReport:
    """A signed report version: ``canonical`` (base64 of the exact bytes signed) and each signature
    (``signer``, ``role``, ``signed_at``, the signer's SM2 ``public_key`` as PEM, ``signature`` as
    base64 DER), verifiable with ``openssl pkeyutl -verify -rawin -digest sm3 -pkeyopt
    distid:1234567812345678``. 404 for a version nobody has signed."""
    with ingestor.sessions.begin() as session:
        item, study = load_item(session, item_id)
        check_access(user, item.worklist, study.institution, item=True)
        doc = signed_report(session, item_id, version)
        actor = actor_of(request, user)
        record_study_access(session, AuditEvent.REPORT_READ, actor, item.study_id, item_id, {"version": version})
        return doc


def _after(ingestor: IngestorDep, user: Reader, item_id: str, state: str) -> ItemDetail:
    with ingestor.sessions() as session:
        return {**item_detail(session, item_id, user, get_targets()), "state": state}


@worklists_router.post("/worklist-items/{item_id}/draft")
def item_draft(ingestor: IngestorDep, request: Request, user: Writer, item_id: str, body: DraftBody) -> ItemDetail:
    """Save the draft report ``{"text", "ai_agrees", "physician_label"}`` (413 above
    ``PRESCREEN_MAX_REPORT_CHARS``; 400 for a label that is not one of the item's ``label_choices``)."""
    settings = get_settings()
    state = act(
        ingestor.sessions,
        item_id,
        "draft",
        user,
        lease=claim_lease(settings),
        draft=DraftText(body.text, body.ai_agrees, body.physician_label),
        max_chars=settings.max_report_chars,
        actor=actor_of(request, user),
    )
    return _after(ingestor, user, item_id, state)


@worklists_router.post("/worklist-items/{item_id}/return")
def item_return(ingestor: IngestorDep, request: Request, user: Writer, item_id: str, body: ReturnBody) -> ItemDetail:
    """Return a report under review to its first reader with a comment."""
    settings = get_settings()
    state = act(
        ingestor.sessions,
        item_id,
        "return",
        user,
        lease=claim_lease(settings),
        comment=body.comment,
        max_chars=settings.max_report_chars,
        actor=actor_of(request, user),
    )
    return _after(ingestor, user, item_id, state)


@worklists_router.post("/worklist-items/{item_id}/{action}")
def item_action(
    ingestor: IngestorDep, request: Request, user: Writer, item_id: str, action: str, body: SignBody | None = None
) -> ItemDetail:
    """``claim`` (409 when someone else holds it), ``release``, ``sign`` (first reader: submit for
    review; associate chief or above, not the first reader: co-sign → final), ``amend`` a final
    report (a new version). ``draft`` and ``return`` take a JSON body (their own routes). Amending is
    sensitive: 401 ``step_up_required`` without a second factor given in the last minutes."""
    if action not in ACTIONS:
        raise NotFoundError(f"no action {action!r}; one of claim, release, draft, sign, return, amend")
    if action == "amend":
        check_fresh(user)
    settings = get_settings()
    digest = body.text_sha256 if body is not None and action == "sign" else None
    state = act(
        ingestor.sessions,
        item_id,
        action,
        user,
        lease=claim_lease(settings),
        text_sha256=digest,
        actor=actor_of(request, user),
    )
    return _after(ingestor, user, item_id, state)


@worklists_router.get("/stats/turnaround")
def turnaround(ingestor: IngestorDep, _user: StatsReader) -> TurnaroundStats:
    """Receipt → final report: p50/p95 minutes and the share within target, by worklist and priority."""
    with ingestor.sessions() as session:
        return {"groups": turnaround_stats(session, get_targets())}


@worklists_router.get("/stats/review-agreement")
def review_agreement_stats(
    ingestor: IngestorDep,
    _user: StatsReader,
    since: Annotated[
        datetime | None, Query(description="Only reports co-signed from this time on (ISO 8601; UTC without offset)")
    ] = None,
) -> ReviewAgreement:
    """The share of co-signed reports the second reader approved without a return or change, overall,
    by worklist and by first reader, with Wilson 95 % intervals and the 0.98 target."""
    with ingestor.sessions() as session:
        return review_agreement(session, since)


@worklists_router.get("/stats/ai-agreement")
def ai_agreement(ingestor: IngestorDep, _user: StatsReader) -> AgreementStats:
    """How often final reports agree with the AI flag, per task and flag (in-service monitoring)."""
    with ingestor.sessions() as session:
        return {"groups": ai_agreement_stats(session)}
