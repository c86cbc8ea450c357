"""The record of which model screens a task: every promotion, refusal and activation, who and when."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from prescreen.security.audit import Actor, ActorKind, AuditEntry, AuditEvent, Outcome
from prescreen.store import audit
from prescreen.store.schema_lifecycle import ModelEvent

#: actions after which ``tag`` was the task's active model
ACTIVATING = ("promote", "activate")
ACTION_MAX = 16
ACTOR_MAX = 128


@dataclass(frozen=True)
class ModelEventRecord:
    """One recorded event (``at`` in UTC)."""

    id: str
    task: str
    action: str
    tag: str
    previous_tag: str | None
    actor: str
    detail: dict[str, Any] | None
    at: datetime


def _record(row: ModelEvent) -> ModelEventRecord:
    at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC)  # SQLite drops the zone
    return ModelEventRecord(row.id, row.task, row.action, row.tag, row.previous_tag, row.actor, row.detail, at)


def record_event(
    sessions: sessionmaker[Session],
    *,
    task: str,
    action: str,
    tag: str,
    actor: str,
    previous_tag: str | None = None,
    detail: dict[str, Any] | None = None,
) -> ModelEventRecord:
    """Store one event.

    Args:
        task: the task whose model changed (or was refused).
        action: ``promote``, ``refuse``, ``activate`` (a rollback) or another lifecycle action.
        tag: ``NAME:VERSION`` of the model acted on.
        actor: who did it (an operator's login).
        previous_tag: the task's active model before the event.
        detail: JSON-safe figures (no NaN): the gate's comparison, a reason, ``forced``.

    Raises:
        ValueError: an empty or over-long action or actor.
    """
    if not action or len(action) > ACTION_MAX:
        raise ValueError(f"an event action is 1–{ACTION_MAX} characters, not {action!r}")
    actor = actor.strip()[:ACTOR_MAX]
    if not actor:
        raise ValueError("an event needs an actor")
    row = ModelEvent(
        task=task,
        action=action,
        tag=tag,
        previous_tag=previous_tag,
        actor=actor,
        detail=detail,
        at=datetime.now(UTC),
    )
    with sessions.begin() as session:
        session.add(row)
        session.flush()
        audit.record(
            session,
            AuditEntry(
                AuditEvent.MODEL_CHANGE,
                Actor(ActorKind.OPERATOR, actor),
                Outcome.MINOR_FAILURE if action == "refuse" else Outcome.SUCCESS,
                object_id=tag,
                detail={"task": task, "action": action, "previous": previous_tag},
            ),
        )
        return _record(row)


def list_events(
    sessions: sessionmaker[Session], task: str | None = None, actions: Iterable[str] | None = None
) -> list[ModelEventRecord]:
    """Events, oldest first; only ``task``'s and only ``actions`` when given."""
    query = select(ModelEvent).order_by(ModelEvent.at, ModelEvent.id)
    if task is not None:
        query = query.where(ModelEvent.task == task)
    if actions is not None:
        query = query.where(ModelEvent.action.in_(list(actions)))
    with sessions() as session:
        return [_record(row) for row in session.scalars(query)]


def previously_active(sessions: sessionmaker[Session], task: str) -> set[str]:
    """Tags that were ``task``'s active model at some point, as the record shows: each promoted or
    activated model, and each model that such an event replaced."""
    query = select(ModelEvent.tag, ModelEvent.previous_tag).where(
        ModelEvent.task == task, or_(*(ModelEvent.action == a for a in ACTIVATING))
    )
    with sessions() as session:
        rows = session.execute(query).all()
    return {tag for row in rows for tag in row if tag}
