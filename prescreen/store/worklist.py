"""Worklist rows: what routing reads of a study and the items it writes (the routing itself is
:mod:`prescreen.pipeline.triage`), and the listing readers see, most urgent first."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import DateTime, func, literal_column, or_, select
from sqlalchemy.orm import Session, selectinload
from typing_extensions import TypedDict  # pydantic (the API's response models) needs it before 3.12

from prescreen.domain import SCREENING_OUTCOMES, OperatingPointName, points_from_json
from prescreen.errors import ForbiddenError, NotFoundError
from prescreen.security.masking import mask_id, mask_name
from prescreen.security.roles import Role
from prescreen.store.queue import as_utc, utcnow
from prescreen.store.schema import Result, Study
from prescreen.store.schema_triage import WorklistItem
from prescreen.store.users import Principal
from prescreen.triage.priority import SlaTargets, band_bounds, effective_priority
from prescreen.triage.rules import Routing, SeriesFacts

# --- from screened study to worklist items -------------------------------------------------


def _flagged_safety(result: Result) -> bool:
    points = points_from_json(result.operating_points, result.score, result.threshold)
    point = points.get(OperatingPointName.SAFETY)
    return result.flagged if point is None else point.flagged


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
                flagged_safety=_flagged_safety(result) if result else None,
                institution=study.institution,
                order_priority=study.order_priority,
            )
        )
    return facts


def studies_to_triage(session: Session, limit: int) -> list[str]:
    """Ids of studies whose screening ended since they were last routed."""
    return list(
        session.scalars(
            select(Study.id)
            .where(
                Study.status.in_(SCREENING_OUTCOMES),
                or_(Study.triaged_at.is_(None), Study.triaged_at < Study.screened_at),
            )
            .limit(limit)
        ).all()
    )


def lock_routable_study(session: Session, study_id: str) -> Study | None:
    """The study, locked, when it still needs routing (screening ended since it was last routed)."""
    study = session.get(Study, study_id, with_for_update=True, populate_existing=True)
    if study is None or study.status not in SCREENING_OUTCOMES:
        return None
    if study.triaged_at is not None and study.screened_at is not None and study.triaged_at >= study.screened_at:
        return None
    return study


def find_item(session: Session, study_id: str, worklist: str) -> WorklistItem | None:
    """The study's item in ``worklist``, if it has one."""
    return session.scalars(
        select(WorklistItem).where(WorklistItem.study_id == study_id, WorklistItem.worklist == worklist)
    ).one_or_none()


def add_item(session: Session, study_id: str, routing: Routing, received: datetime, due: datetime) -> WorklistItem:
    """A new open item of the study in the routing's worklist."""
    item = WorklistItem(
        study_id=study_id,
        worklist=routing.worklist,
        priority=routing.priority,
        rule=routing.rule,
        received_at=received,
        due_at=due,
    )
    session.add(item)
    return item


# --- reading worklists ---------------------------------------------------------------------


class ItemSummary(TypedDict):
    """An open item as a worklist lists it (times are ISO 8601 strings, UTC)."""

    id: str
    study_id: str
    study_uid: str
    worklist: str
    priority: str
    effective_priority: str
    rule: str
    state: str
    task: str | None
    label: str | None
    flagged: bool | None
    score: float | None
    received_at: str
    due_at: str
    seconds_to_due: int
    escalation: int
    claimed_by: str | None
    patient_id: str | None
    patient_name: str | None
    institution: str | None
    modalities: list[str]


def list_worklist(
    session: Session,
    worklist: str,
    targets: SlaTargets,
    *,
    now: datetime | None = None,
    limit: int = 50,
    institutions: Sequence[str] = (),
    viewer_id: str | None = None,
) -> list[ItemSummary]:
    """The open items of a worklist, most urgent first: effective priority (aged by the time left
    to the due time), then AI score, then waiting time. One index range query per band.

    ``institutions``: only studies of these (empty: all). Patient fields are masked except on the
    items ``viewer_id`` holds the claim of (``viewer_id`` None: not masked, for internal callers)."""
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
        if institutions:
            query = query.where(WorklistItem.study_id.in_(select(Study.id).where(Study.institution.in_(institutions))))
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
    summaries = [item_summary(*found[item_id], targets, now, band=band) for item_id, band in picked if item_id in found]
    if viewer_id is None:
        return summaries
    return [with_patient(s, s["claimed_by"] == viewer_id) for s in summaries]


PatientT = TypeVar("PatientT", bound=Mapping[str, Any])


def with_patient(row: PatientT, full: bool) -> PatientT:
    """``row`` as shown: patient name and id in full only when ``full``, else masked (张三丰 → 张*丰,
    P00012345 → *****2345)."""
    if full:
        return row
    masked: Any = dict(row)
    masked["patient_name"] = mask_name(row.get("patient_name"))
    masked["patient_id"] = mask_id(row.get("patient_id"))
    return cast(PatientT, masked)


SQLITE_SORT_LIMIT = 1000


def _band_size(session: Session, worklist: str, low: datetime | None, high: datetime | None) -> int:
    query = select(func.count()).where(WorklistItem.worklist == worklist, WorklistItem.open.is_(True))
    if low is not None:
        query = query.where(WorklistItem.due_at > low)
    if high is not None:
        query = query.where(WorklistItem.due_at <= high)
    return int(session.scalar(query) or 0)


def count_open(session: Session, worklist: str, institutions: Sequence[str] = ()) -> int:
    query = select(func.count()).where(WorklistItem.worklist == worklist, WorklistItem.open.is_(True))
    if institutions:
        query = query.where(WorklistItem.study_id.in_(select(Study.id).where(Study.institution.in_(institutions))))
    return int(session.scalar(query) or 0)


def item_summary(
    item: WorklistItem, study: Study, targets: SlaTargets, now: datetime, band: str | None = None
) -> ItemSummary:
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


def check_access(user: Principal, worklist: str, institution: str | None = None, *, item: bool = False) -> None:
    """Refuse a worklist (or, with ``item``, one of its items of ``institution``) to a user who
    does not read it: not a reader (403), not their specialty (403), another institution's item (404,
    as if it did not exist).

    Raises:
        ForbiddenError: not a reader of this worklist.
        NotFoundError: an item outside the user's institutions.
    """
    if Role.READER not in user.roles:
        raise ForbiddenError("worklists are for readers; your roles are " + (", ".join(user.roles) or "none"))
    if worklist not in user.specialties:
        raise ForbiddenError(f"worklist {worklist!r} is not among your specialties ({', '.join(user.specialties)})")
    if item and not user.serves(institution):
        raise NotFoundError("no such worklist item among your institutions' studies")


def in_worklists(session: Session, study_id: str, worklists: Iterable[str]) -> bool:
    """Whether the study has an item in any of these worklists."""
    wanted = list(worklists)
    if not wanted:
        return False
    count = session.scalar(
        select(func.count()).where(WorklistItem.study_id == study_id, WorklistItem.worklist.in_(wanted))
    )
    return bool(count)
