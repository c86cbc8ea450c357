"""Service levels: escalations at 75 % and 100 % of an item's target, turnaround statistics, and
the physicians' agreement with the AI flag (in-service monitoring of the models)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import TypedDict  # pydantic (the API's response models) needs it before 3.12

from prescreen.domain import Priority
from prescreen.store.queue import as_utc, utcnow
from prescreen.store.schema_triage import Escalation, WorklistItem
from prescreen.triage.priority import SlaTargets


@dataclass(frozen=True)
class Escalated:
    """An escalation just recorded: the item reached ``level`` % of its ``priority``'s target."""

    item_id: str
    worklist: str
    level: int
    priority: str


def record_escalations(
    sessions: sessionmaker[Session], targets: SlaTargets, now: datetime | None = None
) -> list[Escalated]:
    """Record the 75 % and 100 % escalations that open items have reached; returns the new ones."""
    now = (now or utcnow()).astimezone(UTC)
    new: list[Escalated] = []
    try:
        return _escalate(sessions, targets, now, new)
    except IntegrityError:  # another worker recorded the same escalation at the same moment
        return []


def _escalate(
    sessions: sessionmaker[Session], targets: SlaTargets, now: datetime, new: list[Escalated]
) -> list[Escalated]:
    with sessions.begin() as session:
        for level in (100, 75):
            fraction = level / 100
            for priority in Priority:
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
                    new.append(Escalated(item.id, item.worklist, level, priority.value))
    return new


class TurnaroundGroup(TypedDict):
    """Receipt → final report of one worklist and priority: p50/p95 minutes, share within target."""

    worklist: str
    priority: str
    n: int
    p50_minutes: float
    p95_minutes: float
    within_target: float
    target_minutes: float


class AgreementGroup(TypedDict):
    """The share of final reports of one task and AI flag that agree with the flag."""

    task: str
    flagged: bool
    n: int
    agree: float


def turnaround_stats(session: Session, targets: SlaTargets) -> list[TurnaroundGroup]:
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
    out: list[TurnaroundGroup] = []
    for (worklist, priority), minutes in sorted(groups.items()):
        minutes.sort()
        target = targets.target(Priority(priority)).total_seconds() / 60
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


def ai_agreement_stats(session: Session) -> list[AgreementGroup]:
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


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
