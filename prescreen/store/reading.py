"""Reading an item: its detail, and the reader actions (claim, release, draft, sign, return,
amend) applied through the review state machine of :mod:`prescreen.triage.review`.

The first reader's draft carries their own label of the study (one of the task's classes, or "not
assessable"; checked by :func:`~prescreen.triage.review.check_label`); a draft of a screened study
is not submitted without it, and the label stays with the report through co-signature, return and
amendment: the ground truth that monitors the models in service.

Each action is one transaction. A claim is a conditional ``UPDATE`` on the item's revision (with
the row locked on PostgreSQL), so of two concurrent claims exactly one wins, also across processes.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import TypedDict  # pydantic (the API's response models) needs it before 3.12

from prescreen.config import get_settings
from prescreen.errors import ConflictError, ForbiddenError, InvalidStudyError, StudyTooLargeError, UnknownTaskError
from prescreen.security.audit import Actor as AuditActor
from prescreen.security.audit import ActorKind, AuditEntry, AuditEvent
from prescreen.security.keyring import keyring_for
from prescreen.security.keys import patient_pseudonym
from prescreen.store import audit
from prescreen.store.queue import as_utc, changed, utcnow
from prescreen.store.schema_triage import Escalation, ItemEvent, Report, Signature, User, WorklistItem
from prescreen.store.signing import sign_version
from prescreen.store.users import Principal
from prescreen.store.worklist import ItemSummary, check_access, item_summary, load_item, with_patient
from prescreen.triage.priority import SlaTargets
from prescreen.triage.review import Actor, ItemState, allowed_actions, check_label, decide, label_choices


class SignatureRow(TypedDict):
    """Who signed a report version's text (its digest), when, and as what."""

    by: str | None
    user_id: str
    kind: str
    signed_at: str
    text_sha256: str


class ReportVersion(TypedDict):
    """One version of an item's report, with its signatures."""

    version: int
    status: str
    text: str
    ai_agrees: bool | None
    physician_label: str | None
    text_sha256: str
    author: str | None
    updated_at: str
    signatures: list[SignatureRow]


class EscalationRow(TypedDict):
    """The item reached ``level`` % of its SLA target ``at``."""

    level: int
    at: str


class HistoryRow(TypedDict):
    """One action on the item, by whom and when."""

    action: str
    state: str
    by: str | None
    at: str
    comment: str | None


class ItemDetail(ItemSummary):
    """An item with its readers, report versions, escalations, history and the actions allowed now
    (times are ISO 8601 strings, UTC)."""

    first_reader: str | None
    first_reader_id: str | None
    claimed_by_name: str | None
    claim_expires: str | None
    return_comment: str | None
    ai_agrees: bool | None
    finalized_at: str | None
    label_choices: list[str]
    reports: list[ReportVersion]
    escalations: list[EscalationRow]
    history: list[HistoryRow]
    allowed_actions: list[str]


def item_detail(session: Session, item_id: str, user: Principal, targets: SlaTargets) -> ItemDetail:
    """An item with its study, report versions with their signatures, escalations and history.

    The patient's name and id are in full only for the reader holding the claim, the first reader
    and the signers (the reviewer); masked for every other reader of the worklist."""
    item, study = load_item(session, item_id)
    check_access(user, item.worklist, study.institution, item=True)
    now = utcnow()
    reports = session.scalars(select(Report).where(Report.item_id == item.id).order_by(Report.version)).all()
    events = session.scalars(select(ItemEvent).where(ItemEvent.item_id == item.id).order_by(ItemEvent.at)).all()
    signers = select(Signature.user_id).where(Signature.report_id.in_([r.id for r in reports]))
    user_ids = {item.first_reader_id, item.claimed_by, *(r.author_id for r in reports), *(e.user_id for e in events)}
    names = {
        u.id: u.name
        for u in session.scalars(select(User).where(or_(User.id.in_([i for i in user_ids if i]), User.id.in_(signers))))
    }
    versions: list[ReportVersion] = []
    for report in reports:
        signatures = session.scalars(
            select(Signature).where(Signature.report_id == report.id).order_by(Signature.signed_at)
        ).all()
        versions.append(
            {
                "version": report.version,
                "status": report.status,
                "text": report.text,
                "ai_agrees": report.ai_agrees,
                "physician_label": report.physician_label,
                "text_sha256": _digest(report.text),
                "author": names.get(report.author_id),
                "updated_at": as_utc(report.updated_at).isoformat(),
                "signatures": [
                    {
                        "by": names.get(s.user_id),
                        "user_id": s.user_id,
                        "kind": s.kind,
                        "signed_at": as_utc(s.signed_at).isoformat(),
                        "text_sha256": s.text_sha256,
                    }
                    for s in signatures
                ],
            }
        )
    escalations = session.scalars(select(Escalation).where(Escalation.item_id == item.id).order_by(Escalation.at))
    state = _item_state(item, session)
    holds_claim = item.claimed_by == user.id and item.claim_expires is not None and as_utc(item.claim_expires) > now
    signed = any(s["user_id"] == user.id for v in versions for s in v["signatures"])
    full = holds_claim or item.first_reader_id == user.id or signed
    return {
        **with_patient(item_summary(item, study, targets, now), full),
        "first_reader": names.get(item.first_reader_id or ""),
        "first_reader_id": item.first_reader_id,
        "claimed_by_name": names.get(item.claimed_by or ""),
        "claim_expires": as_utc(item.claim_expires).isoformat() if item.claim_expires else None,
        "return_comment": item.return_comment,
        "ai_agrees": item.ai_agrees,
        "finalized_at": as_utc(item.finalized_at).isoformat() if item.finalized_at else None,
        "label_choices": list(label_choices(task_classes(item.task))),
        "reports": versions,
        "escalations": [{"level": e.level, "at": as_utc(e.at).isoformat()} for e in escalations],
        "history": [
            {
                "action": e.action,
                "state": e.state,
                "by": names.get(e.user_id or ""),
                "at": as_utc(e.at).isoformat(),
                "comment": (e.detail or {}).get("comment"),
            }
            for e in events
        ],
        "allowed_actions": allowed_actions(state, Actor(user.id, user.grade), now),  # type: ignore[arg-type]
    }


@dataclass(frozen=True)
class DraftText:
    text: str
    ai_agrees: bool | None
    #: the physician's own label of the study (checked against the item's task when saved)
    physician_label: str | None = None


def task_classes(task: str | None) -> tuple[str, ...]:
    """The classes of a task, which a physician labels its studies with (none for an unscreened
    study, or a task this service no longer knows)."""
    if task is None:
        return ()
    from prescreen.models.task import get_task  # late: the task registry loads the networks' modules

    try:
        return get_task(task).classes
    except UnknownTaskError:
        return ()


def _current_report(session: Session, item_id: str) -> Report | None:
    return session.scalars(select(Report).where(Report.item_id == item_id).order_by(Report.version.desc())).first()


def _item_state(item: WorklistItem, session: Session) -> ItemState:
    report = _current_report(session, item.id)
    return ItemState(
        state=item.state,
        first_reader=item.first_reader_id,
        claimed_by=item.claimed_by,
        claim_expires=as_utc(item.claim_expires) if item.claim_expires else None,
        has_draft=report is not None and report.status == "draft" and bool(report.text.strip()),
        label_missing=item.task is not None and (report is None or not report.physician_label),
    )


def act(
    sessions: sessionmaker[Session],
    item_id: str,
    action: str,
    user: Principal,
    *,
    lease: timedelta,
    draft: DraftText | None = None,
    comment: str | None = None,
    max_chars: int = 20000,
    text_sha256: str | None = None,
    actor: AuditActor | None = None,
) -> str:
    """Apply one reader action (claim, release, draft, sign, return, amend); returns the new state.

    ``text_sha256`` (for ``sign``) is the digest of the report text the signer read: a sign over a
    text that has changed since is refused (409), so a signature always covers what was read.

    Raises:
        NotFoundError: no such item.
        ForbiddenError: the user may not (specialty, grade, own report, someone else's claim).
        ConflictError: the item's state does not allow it, or another reader won the race.
        StudyTooLargeError: a report text over ``max_chars``.
    """
    if draft is not None and len(draft.text) > max_chars:
        raise StudyTooLargeError(f"the report text exceeds {max_chars} characters")
    if comment is not None and len(comment) > max_chars:
        raise StudyTooLargeError(f"the comment exceeds {max_chars} characters")
    now = utcnow()
    with sessions.begin() as session:
        item, study = load_item(session, item_id, for_update=True)
        check_access(user, item.worklist, study.institution, item=True)
        state = _item_state(item, session)
        if action == "sign" and text_sha256 is not None:
            current = _current_report(session, item.id)
            if current is None or _digest(current.text) != text_sha256.lower():
                raise ConflictError("the report text changed since you opened it; reload it and read it again")
        try:
            decision = decide(state, action, Actor(user.id, user.grade), now, lease)  # type: ignore[arg-type]
        except (ForbiddenError, ConflictError) as exc:
            raise type(exc)(_with_names(session, str(exc), state)) from None
        if draft is not None and action == "draft":
            if draft.physician_label is None and draft.ai_agrees is True and item.task is not None and item.label:
                # agreeing with the AI, without a label of one's own, states the AI's label as one's own
                draft = replace(draft, physician_label=item.label)
            draft = replace(draft, physician_label=check_label(draft.physician_label, task_classes(item.task)))
        done = session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item.id, WorklistItem.revision == item.revision)
            .values(
                state=decision.state,
                first_reader_id=decision.first_reader,
                claimed_by=decision.claimed_by,
                claim_expires=decision.claim_expires,
                revision=item.revision + 1,
            )
        )
        if changed(done) != 1:
            raise ConflictError("another reader changed this item at the same moment; reload it")
        _apply_report(session, item, action, user, decision.signature, decision.new_version, draft, comment, now)
        detail = {"comment": comment} if action == "return" and comment else None
        session.add(
            ItemEvent(item_id=item.id, user_id=user.id, action=action, state=decision.state, at=now, detail=detail)
        )
        event = AUDITED_ACTIONS[action]
        if action == "sign" and decision.signature == "cosigned":
            event = AuditEvent.REPORT_COSIGN
        audit.record(
            session,
            AuditEntry(
                event,
                actor or AuditActor(ActorKind.USER, user.login),
                study_uid=study.study_uid,
                patient_hash=patient_pseudonym(get_settings(), study.patient_id),
                object_id=item.id,
                detail={"state": decision.state, "worklist": item.worklist},
            ),
        )
        return decision.state


AUDITED_ACTIONS = {
    "claim": AuditEvent.ITEM_CLAIM,
    "release": AuditEvent.ITEM_RELEASE,
    "draft": AuditEvent.REPORT_DRAFT,
    "sign": AuditEvent.REPORT_SIGN,
    "return": AuditEvent.REPORT_RETURN,
    "amend": AuditEvent.REPORT_AMEND,
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _with_names(session: Session, message: str, state: ItemState) -> str:
    """The decision's reason with user ids replaced by names: readers see it."""
    for user_id in {state.first_reader, state.claimed_by} - {None}:
        user = session.get(User, user_id)
        if user is not None and user_id:
            message = message.replace(user_id, user.name)
    return message


def _apply_report(
    session: Session,
    item: WorklistItem,
    action: str,
    user: Principal,
    signature: str | None,
    new_version: bool,
    draft: DraftText | None,
    comment: str | None,
    now: datetime,
) -> None:
    report = _current_report(session, item.id)
    if action == "draft":
        if draft is None:
            raise InvalidStudyError('a draft needs a JSON body {"text": ..., "ai_agrees": true|false}')
        if report is None or report.status not in ("draft",):
            report = Report(item_id=item.id, version=(report.version + 1) if report else 1, author_id=user.id)
            session.add(report)
        report.text, report.ai_agrees, report.author_id, report.status = draft.text, draft.ai_agrees, user.id, "draft"
        report.physician_label = draft.physician_label
        report.updated_at = now
    elif action == "amend" and new_version and report is not None:
        report.status = "superseded"
        session.add(
            Report(
                item_id=item.id,
                version=report.version + 1,
                text=report.text,
                ai_agrees=report.ai_agrees,
                physician_label=report.physician_label,
                author_id=user.id,
                status="draft",
            )
        )
        session.execute(update(WorklistItem).where(WorklistItem.id == item.id).values(open=True, finalized_at=None))
    elif action == "return":
        session.execute(update(WorklistItem).where(WorklistItem.id == item.id).values(return_comment=comment))
        if report is not None:
            report.status = "draft"
    elif action == "sign" and report is not None and signature is not None:
        digest = _digest(report.text)
        # the signer's SM2 signature of the version's canonical form, made inside their own sign action
        canonical, sm2, key = sign_version(session, keyring_for(get_settings()), item, report, user.id)
        session.add(
            Signature(
                report_id=report.id,
                user_id=user.id,
                kind=signature,
                text=report.text,
                text_sha256=digest,
                signed_at=now,
                canonical=base64.b64encode(canonical).decode(),
                sm2_signature=base64.b64encode(sm2).decode(),
                key_id=key.key_id,
            )
        )
        if signature == "submitted":
            report.status = "submitted"
        elif signature == "cosigned":
            report.status = "final"
            session.execute(
                update(WorklistItem)
                .where(WorklistItem.id == item.id)
                .values(open=False, finalized_at=now, ai_agrees=report.ai_agrees, return_comment=None)
            )


def latest_report(session: Session, item_id: str) -> Report | None:
    """The newest report version of an item (a draft, or the signed text)."""
    return session.scalars(select(Report).where(Report.item_id == item_id).order_by(Report.version.desc())).first()
