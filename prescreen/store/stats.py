"""Aggregate counts of the whole store for monitoring (the ``prescreen_*`` Prometheus series).

A handful of ``GROUP BY`` queries, valid on SQLite and PostgreSQL (no dialect-only functions; the
operating points are read from the ``results.operating_points`` JSON with SQLAlchemy's portable
JSON path); the results table, the largest, is scanned once. Every key is a low-cardinality value
(task, model version, status, worklist, priority, state, level, alarm kind): never a study, patient
or institution.

Scrapes must not hold up the service's writers. The service's SQLite engine starts every
transaction with ``BEGIN IMMEDIATE`` (the write lock), so on SQLite the counts are read through an
engine of their own on the same file that does not: each ``SELECT`` then reads a snapshot of the
WAL and writers go on meanwhile. PostgreSQL readers never block writers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, create_engine, distinct, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from prescreen.domain import JobState, OperatingPointName
from prescreen.errors import ServiceUnavailableError
from prescreen.store.queue import as_utc, utcnow
from prescreen.store.schema import Job, Result, Series, Study
from prescreen.store.schema_lifecycle import Alarm, ShadowResult
from prescreen.store.schema_triage import Escalation, WorklistItem

LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the screening-latency histogram; ``+Inf`` is implied."""

BREACH_LEVEL = 100
"""The escalation level (% of the target) at which an item breached its SLA."""

POINTS: tuple[str, ...] = tuple(p.value for p in OperatingPointName)
"""The operating points whose flags are counted."""


@dataclass(frozen=True)
class Histogram:
    """A histogram of one task: cumulative counts at each of :data:`LATENCY_BUCKETS`, the count
    and the sum of all observations."""

    cumulative: tuple[int, ...]
    count: int
    total: float


@dataclass(frozen=True)
class StoreStats:
    """What the store holds, counted (the dict keys are label values, in the order given).

    Attributes:
        studies_by_status: studies per status.
        studies_screened: studies with a model result, per task (ever; a study counts once per task).
        results: series screened (model results) per (task, model version).
        flags: results flagged per (task, operating point); a result stored before operating points
            existed counts at both points by its score and threshold.
        jobs: jobs per state (``pending``, ``running``, ``done``, ``unscreenable``, ``failed``).
        oldest_pending_seconds: age of the oldest pending job (0 when none).
        latency: model seconds per series, per task.
        worklist_open: open items per (worklist, priority, state).
        worklist_overdue: open items past their due time per (worklist, priority).
        escalations: escalations per (worklist, priority, level).
        alarms: monitoring alarms per (kind, task).
        shadow_results: shadow findings per (task, model version).
    """

    studies_by_status: dict[str, int] = field(default_factory=dict)
    studies_screened: dict[str, int] = field(default_factory=dict)
    results: dict[tuple[str, str], int] = field(default_factory=dict)
    flags: dict[tuple[str, str], int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    oldest_pending_seconds: float = 0.0
    latency: dict[str, Histogram] = field(default_factory=dict)
    worklist_open: dict[tuple[str, str, str], int] = field(default_factory=dict)
    worklist_overdue: dict[tuple[str, str], int] = field(default_factory=dict)
    escalations: dict[tuple[str, str, int], int] = field(default_factory=dict)
    alarms: dict[tuple[str, str], int] = field(default_factory=dict)
    shadow_results: dict[tuple[str, str], int] = field(default_factory=dict)


def store_stats(sessions: sessionmaker[Session], now: datetime | None = None) -> StoreStats:
    """Count everything :class:`StoreStats` holds, without taking SQLite's write lock.

    Args:
        sessions: session factory of the migrated database.
        now: the time that ages the queue and decides what is overdue (default: now).

    Raises:
        ServiceUnavailableError: the database did not answer.
    """
    now = now or utcnow()
    try:
        with read_only(sessions)() as session:
            return _collect(session, now)
    except SQLAlchemyError as exc:
        raise ServiceUnavailableError(f"the database did not answer ({type(exc).__name__})") from None


def read_only(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions that read without the write lock: on a SQLite file, through :func:`_sqlite_reader`."""
    bind = sessions.kw.get("bind")
    if isinstance(bind, Engine) and bind.dialect.name == "sqlite" and bind.url.database not in (None, "", ":memory:"):
        return sessionmaker(_sqlite_reader(bind.url.render_as_string(hide_password=False)))
    return sessions


@lru_cache(maxsize=8)
def _sqlite_reader(url: str) -> Engine:
    """A plain engine on the SQLite file (no ``BEGIN IMMEDIATE``; a connection per scrape)."""
    return create_engine(url, poolclass=NullPool, connect_args={"timeout": 30}, hide_parameters=True)


def _collect(session: Session, now: datetime) -> StoreStats:
    results, flags, latency = _results(session)
    return StoreStats(
        studies_by_status=_counts(session.execute(select(Study.status, func.count()).group_by(Study.status))),
        studies_screened=_counts(
            session.execute(
                select(Result.task, func.count(distinct(Series.study_id)))
                .join(Series, Series.id == Result.series_id)
                .group_by(Result.task)
            )
        ),
        results=results,
        flags=flags,
        jobs=_counts(session.execute(select(Job.state, func.count()).group_by(Job.state))),
        oldest_pending_seconds=_oldest_pending(session, now),
        latency=latency,
        worklist_open=_counts(
            session.execute(
                select(WorklistItem.worklist, WorklistItem.priority, WorklistItem.state, func.count())
                .where(WorklistItem.open.is_(True))
                .group_by(WorklistItem.worklist, WorklistItem.priority, WorklistItem.state)
            )
        ),
        worklist_overdue=_counts(
            session.execute(
                select(WorklistItem.worklist, WorklistItem.priority, func.count())
                .where(WorklistItem.open.is_(True), WorklistItem.due_at < now)
                .group_by(WorklistItem.worklist, WorklistItem.priority)
            )
        ),
        escalations=_counts(
            session.execute(
                select(WorklistItem.worklist, WorklistItem.priority, Escalation.level, func.count())
                .join(WorklistItem, WorklistItem.id == Escalation.item_id)
                .group_by(WorklistItem.worklist, WorklistItem.priority, Escalation.level)
            )
        ),
        alarms=_counts(session.execute(select(Alarm.kind, Alarm.task, func.count()).group_by(Alarm.kind, Alarm.task))),
        shadow_results=_counts(
            session.execute(
                select(ShadowResult.task, ShadowResult.model_version, func.count()).group_by(
                    ShadowResult.task, ShadowResult.model_version
                )
            )
        ),
    )


def _counts(rows: Iterable[Any]) -> dict[Any, int]:
    """``{key: count}`` from ``(key..., count)`` rows; a one-column key is the value itself."""
    out: dict[Any, int] = {}
    for row in rows:
        *key, n = tuple(row)
        out[key[0] if len(key) == 1 else tuple(key)] = int(n or 0)
    return out


def _point_flagged(name: str) -> ColumnElement[bool]:
    """Whether a result is flagged at operating point ``name``: the stored decision, else (a result
    from before operating points) its score against its one threshold."""
    stored = Result.operating_points[(name, "flagged")].as_boolean()
    return func.coalesce(stored, Result.score >= Result.threshold)


def _results(
    session: Session,
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], dict[str, Histogram]]:
    """One pass over the results: series per (task, version), flags per (task, point), latency per task."""
    seconds = Result.seconds
    flagged = [func.sum(case((_point_flagged(p), 1), else_=0)) for p in POINTS]
    below = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in LATENCY_BUCKETS]
    rows = session.execute(
        select(
            Result.task, Result.model_version, func.count(), func.count(seconds), func.sum(seconds), *flagged, *below
        ).group_by(Result.task, Result.model_version)
    )
    results: dict[tuple[str, str], int] = {}
    flags: dict[tuple[str, str], int] = {}
    latency: dict[str, tuple[list[int], int, float]] = {}
    for task, version, n, timed, total, *rest in rows:
        results[(task, version)] = int(n)
        for point, k in zip(POINTS, rest[: len(POINTS)], strict=True):
            flags[(task, point)] = flags.get((task, point), 0) + int(k or 0)
        cumulative, count, seconds_sum = latency.setdefault(task, ([0] * len(LATENCY_BUCKETS), 0, 0.0))
        for i, c in enumerate(rest[len(POINTS) :]):
            cumulative[i] += int(c or 0)
        latency[task] = (cumulative, count + int(timed or 0), seconds_sum + float(total or 0.0))
    histograms = {task: Histogram(tuple(c), n, total) for task, (c, n, total) in latency.items() if n}
    return results, flags, histograms


def _oldest_pending(session: Session, now: datetime) -> float:
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.state == JobState.PENDING))
    if oldest is None:
        return 0.0
    return max(0.0, (as_utc(now) - as_utc(oldest)).total_seconds())
