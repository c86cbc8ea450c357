"""Worklists in the database: screened studies become items by the routing rules; readers claim,
draft, sign and return them through the review state machine; SLA escalations are recorded.

The decisions (routing, priority, transitions) are the pure functions of :mod:`prescreen.triage`;
this module only loads their inputs and applies their outcomes, each in one transaction. A claim
is a conditional ``UPDATE`` on the item's revision, so of two concurrent claims exactly one wins,
also across processes on one PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, func, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from prescreen.errors import ConflictError, ForbiddenError, InvalidStudyError, NotFoundError, StudyTooLargeError
from prescreen.store.queue import as_utc, changed, utcnow
from prescreen.store.schema import Result, Study
from prescreen.store.schema_triage import Escalation, ItemEvent, Report, Signature, User, WorklistItem
from prescreen.store.users import Principal
from prescreen.triage.priority import PRIORITIES, Priority, SlaTargets, band_bounds, due_at, effective_priority, rank
from prescreen.triage.review import Actor, ItemState, allowed_actions, decide
from prescreen.triage.rules import Routing, RuleSet, SeriesFacts, route_study

FINAL_STUDY_STATES = ("screened", "unscreenable", "failed")


# --- from screened study to worklist items -------------------------------------------------


def series_facts(session: Session, study: Study) -> list[SeriesFacts]:
    """What the routing rules look at, per series: the newest result (if any) and the context."""
    facts = []
    for series in study.series:
        result = session.scalars(
            select(Result).where(Result.series_id == series.id).order_by(Result.created_at.desc())
        ).first()
        facts.append(
            SeriesFacts(
                task=result.task if result else None,
                modality=series.modality,
                body_part=series.body_part,
                label=result.label if result else None,
                score=result.score if result else None,
                flagged=result.flagged if result else None,
                institution=study.institution,
                order_priority=study.order_priority,
            )
        )
    return facts


def triage_pending(sessions: sessionmaker[Session], rules: RuleSet, targets: SlaTargets, limit: int = 50) -> int:
    """Route studies that finished screening since they were last routed; returns how many."""
    with sessions() as session:
        pending = session.scalars(
            select(Study.id)
            .where(
                Study.status.in_(FINAL_STUDY_STATES),
                or_(Study.triaged_at.is_(None), Study.triaged_at < Study.screened_at),
            )
            .limit(limit)
        ).all()
    for study_id in pending:
        try:
            with sessions.begin() as session:
                triage_study(session, study_id, rules, targets)
        except IntegrityError:
            continue  # another worker routed it at the same moment
    return len(pending)


def triage_study(session: Session, study_id: str, rules: RuleSet, targets: SlaTargets) -> list[Routing]:
    study = session.get(Study, study_id, with_for_update=True, populate_existing=True)
    if study is None or study.status not in FINAL_STUDY_STATES:
        return []
    if study.triaged_at is not None and study.screened_at is not None and study.triaged_at >= study.screened_at:
        return []
    facts = series_facts(session, study)
    routings = route_study(rules, facts)
    by_worklist: dict[str, list[SeriesFacts]] = {}
    for fact in facts or [SeriesFacts()]:
        routed = rules.route(fact)
        if routed is not None:
            by_worklist.setdefault(routed.worklist, []).append(fact)
    received = as_utc(study.received_at)
    for routing in routings:
        # the AI result shown (and sorted by) is that of the series routed to this worklist
        mine = [f for f in by_worklist.get(routing.worklist, []) if f.score is not None]
        top = max(mine, key=lambda f: f.score or 0.0, default=None)
        item = session.scalars(
            select(WorklistItem).where(WorklistItem.study_id == study_id, WorklistItem.worklist == routing.worklist)
        ).one_or_none()
        due = due_at(received, routing.priority, targets)
        if item is None:
            item = WorklistItem(
                study_id=study_id,
                worklist=routing.worklist,
                priority=routing.priority,
                rule=routing.rule,
                received_at=received,
                due_at=due,
            )
            session.add(item)
        elif item.open and rank(routing.priority) < rank(_priority(item.priority)):  # re-screened: more urgent
            item.priority, item.rule, item.due_at = routing.priority, routing.rule, min(as_utc(item.due_at), due)
        if item.open is not False:  # a final report keeps the result it was read with
            item.task = top.task if top else None
            item.label = top.label if top else None
            item.flagged = top.flagged if top else None
            item.score = top.score if top else None
            item.revision = (item.revision or 0) + 1
    study.triaged_at = utcnow()
    return routings


# --- reading worklists ---------------------------------------------------------------------


def list_worklist(
    session: Session, worklist: str, targets: SlaTargets, *, now: datetime | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The open items of a worklist, most urgent first: effective priority (aged by the time left
    to the due time), then AI score, then waiting time. One index range query per band."""
    now = (now or utcnow()).astimezone(UTC)  # SQLite compares stored UTC clock times
    picked: list[tuple[str, str]] = []
    sqlite = session.get_bind().dialect.name == "sqlite"
    for band, (low, high) in band_bounds(now, targets).items():
        if len(picked) >= limit:
            break
        # ids first, from the index (worklist, open, score DESC NULLS LAST, received_at, due_at); the
        # studies are joined for the page's rows only
        due: Any = WorklistItem.due_at
        if sqlite and _band_size(session, worklist, low, high) > SQLITE_SORT_LIMIT:
            # SQLite would range-scan the due index and sort the whole band; "+due_at" keeps it off
            # that index, so it walks the rank index in order and stops after `limit` rows
            due = literal_column("+worklist_items.due_at", DateTime(timezone=True))
        query = select(WorklistItem.id).where(WorklistItem.worklist == worklist, WorklistItem.open.is_(True))
        if low is not None:
            query = query.where(due > low)
        if high is not None:
            query = query.where(due <= high)
        query = query.order_by(WorklistItem.score.desc().nulls_last(), WorklistItem.received_at)
        picked += [(item_id, band) for item_id in session.scalars(query.limit(limit - len(picked)))]
    if not picked:
        return []
    rows = session.execute(
        select(WorklistItem, Study)
        .join(Study, Study.id == WorklistItem.study_id)
        .where(WorklistItem.id.in_([item_id for item_id, _ in picked]))
        .options(selectinload(Study.series))
    ).all()
    found = {item.id: (item, study) for item, study in rows}
    return [item_summary(*found[item_id], targets, now, band=band) for item_id, band in picked if item_id in found]


SQLITE_SORT_LIMIT = 1000


def _band_size(session: Session, worklist: str, low: datetime | None, high: datetime | None) -> int:
    query = select(func.count()).where(WorklistItem.worklist == worklist, WorklistItem.open.is_(True))
    if low is not None:
        query = query.where(WorklistItem.due_at > low)
    if high is not None:
        query = query.where(WorklistItem.due_at <= high)
    return int(session.scalar(query) or 0)


def count_open(session: Session, worklist: str) -> int:
    return int(
        session.scalar(
            select(func.count()).where(WorklistItem.worklist == worklist, WorklistItem.open.is_(True))
        )
        or 0
    )


def item_summary(
    item: WorklistItem, study: Study, targets: SlaTargets, now: datetime, band: str | None = None
) -> dict[str, Any]:
    due = as_utc(item.due_at)
    return {
        "id": item.id,
        "study_id": item.study_id,
        "study_uid": study.study_uid,
        "worklist": item.worklist,
        "priority": item.priority,
        "effective_priority": band or effective_priority(due, now, targets),
        "rule": item.rule,
        "state": item.state,
        "task": item.task,
        "label": item.label,
        "flagged": item.flagged,
        "score": item.score,
        "received_at": as_utc(item.received_at).isoformat(),
        "due_at": due.isoformat(),
        "seconds_to_due": round((due - now).total_seconds()),
        "escalation": item.escalation,
        "claimed_by": item.claimed_by if item.claim_expires and as_utc(item.claim_expires) > now else None,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "institution": study.institution,
        "modalities": sorted({s.modality for s in study.series if s.modality}),
    }


def load_item(session: Session, item_id: str, *, for_update: bool = False) -> tuple[WorklistItem, Study]:
    item = session.get(WorklistItem, item_id, with_for_update=for_update, populate_existing=for_update)
    if item is None:
        raise NotFoundError(f"no worklist item {item_id!r}")
    study = session.get(Study, item.study_id)
    assert study is not None
    return item, study


def item_detail(session: Session, item_id: str, user: Principal, targets: SlaTargets) -> dict[str, Any]:
    """An item with its study, report versions with their signatures, escalations and history."""
    item, study = load_item(session, item_id)
    check_access(user, item.worklist)
    now = utcnow()
    reports = session.scalars(select(Report).where(Report.item_id == item.id).order_by(Report.version)).all()
    events = session.scalars(select(ItemEvent).where(ItemEvent.item_id == item.id).order_by(ItemEvent.at)).all()
    signers = select(Signature.user_id).where(Signature.report_id.in_([r.id for r in reports]))
    user_ids = {item.first_reader_id, item.claimed_by, *(r.author_id for r in reports), *(e.user_id for e in events)}
    names = {
        u.id: u.name
        for u in session.scalars(select(User).where(or_(User.id.in_([i for i in user_ids if i]), User.id.in_(signers))))
    }
    versions = []
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
    return {
        **item_summary(item, study, targets, now),
        "first_reader": names.get(item.first_reader_id or ""),
        "first_reader_id": item.first_reader_id,
        "claimed_by_name": names.get(item.claimed_by or ""),
        "claim_expires": as_utc(item.claim_expires).isoformat() if item.claim_expires else None,
        "return_comment": item.return_comment,
        "ai_agrees": item.ai_agrees,
        "finalized_at": as_utc(item.finalized_at).isoformat() if item.finalized_at else None,
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


def check_access(user: Principal, worklist: str) -> None:
    if not user.is_admin and worklist not in user.specialties:
        raise ForbiddenError(f"worklist {worklist!r} is not among your specialties ({', '.join(user.specialties)})")


# --- acting on an item ---------------------------------------------------------------------


@dataclass(frozen=True)
class DraftText:
    text: str
    ai_agrees: bool | None


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
        item, _study = load_item(session, item_id, for_update=True)
        check_access(user, item.worklist)
        state = _item_state(item, session)
        if action == "sign" and text_sha256 is not None:
            current = _current_report(session, item.id)
            if current is None or _digest(current.text) != text_sha256.lower():
                raise ConflictError("the report text changed since you opened it; reload it and read it again")
        try:
            decision = decide(state, action, Actor(user.id, user.grade), now, lease)  # type: ignore[arg-type]
        except (ForbiddenError, ConflictError) as exc:
            raise type(exc)(_with_names(session, str(exc), state)) from None
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
        return decision.state


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
            raise InvalidStudyError("a draft needs a JSON body {\"text\": ..., \"ai_agrees\": true|false}")
        if report is None or report.status not in ("draft",):
            report = Report(item_id=item.id, version=(report.version + 1) if report else 1, author_id=user.id)
            session.add(report)
        report.text, report.ai_agrees, report.author_id, report.status = draft.text, draft.ai_agrees, user.id, "draft"
        report.updated_at = now
    elif action == "amend" and new_version and report is not None:
        report.status = "superseded"
        session.add(
            Report(
                item_id=item.id,
                version=report.version + 1,
                text=report.text,
                ai_agrees=report.ai_agrees,
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
        session.add(
            Signature(report_id=report.id, user_id=user.id, kind=signature, text=report.text, text_sha256=digest)
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


# --- SLA -----------------------------------------------------------------------------------


def escalate(sessions: sessionmaker[Session], targets: SlaTargets, now: datetime | None = None) -> list[dict[str, Any]]:
    """Record the 75 % and 100 % escalations that open items have reached; returns the new ones."""
    now = (now or utcnow()).astimezone(UTC)
    new: list[dict[str, Any]] = []
    try:
        return _escalate(sessions, targets, now, new)
    except IntegrityError:  # another worker recorded the same escalation at the same moment
        return []


def _escalate(
    sessions: sessionmaker[Session], targets: SlaTargets, now: datetime, new: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    with sessions.begin() as session:
        for level in (100, 75):
            fraction = level / 100
            for priority in PRIORITIES:
                target = targets.target(priority)
                reached = now - target * fraction  # received at or before this → level reached
                rows = session.scalars(
                    select(WorklistItem)
                    .where(
                        WorklistItem.open.is_(True),
                        WorklistItem.priority == priority,
                        WorklistItem.escalation < level,
                        WorklistItem.received_at <= reached,
                    )
                    .with_for_update(skip_locked=True)
                ).all()
                for item in rows:
                    item.escalation = level
                    session.add(Escalation(item_id=item.id, level=level, at=now))
                    new.append({"item_id": item.id, "worklist": item.worklist, "level": level, "priority": priority})
    return new


def turnaround_stats(session: Session, targets: SlaTargets) -> list[dict[str, Any]]:
    """Receipt → final report, p50/p95 (minutes) and the share within target, by worklist and priority."""
    rows = session.execute(
        select(WorklistItem.worklist, WorklistItem.priority, WorklistItem.received_at, WorklistItem.finalized_at).where(
            WorklistItem.finalized_at.is_not(None)
        )
    ).all()
    groups: dict[tuple[str, str], list[float]] = {}
    for worklist, priority, received, finalized in rows:
        if finalized is None:
            continue
        waited = (as_utc(finalized) - as_utc(received)).total_seconds() / 60
        groups.setdefault((worklist, priority), []).append(waited)
    out = []
    for (worklist, priority), minutes in sorted(groups.items()):
        minutes.sort()
        target = targets.target(_priority(priority)).total_seconds() / 60
        out.append(
            {
                "worklist": worklist,
                "priority": priority,
                "n": len(minutes),
                "p50_minutes": round(_quantile(minutes, 0.5), 1),
                "p95_minutes": round(_quantile(minutes, 0.95), 1),
                "within_target": round(sum(m <= target for m in minutes) / len(minutes), 3),
                "target_minutes": target,
            }
        )
    return out


def ai_agreement_stats(session: Session) -> list[dict[str, Any]]:
    """Physicians' agreement with the AI flag on final reports, per task and flag: the ground truth
    that monitors each model in service (a disagreement on a flagged study is a false positive, on an
    unflagged one a false negative, as the physician judged it)."""
    rows = session.execute(
        select(WorklistItem.task, WorklistItem.flagged, WorklistItem.ai_agrees).where(
            WorklistItem.finalized_at.is_not(None), WorklistItem.ai_agrees.is_not(None), WorklistItem.task.is_not(None)
        )
    ).all()
    groups: dict[tuple[str, bool], list[bool]] = {}
    for task, flagged, agrees in rows:
        groups.setdefault((str(task), bool(flagged)), []).append(bool(agrees))
    return [
        {"task": task, "flagged": flagged, "n": len(votes), "agree": round(sum(votes) / len(votes), 3)}
        for (task, flagged), votes in sorted(groups.items())
    ]


def _priority(value: str) -> Priority:
    if value not in PRIORITIES:
        raise ValueError(f"priority {value!r} is not one of {', '.join(PRIORITIES)}")
    return value


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)

