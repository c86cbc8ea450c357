"""The durable screening queue: studies become jobs when complete; workers claim, run and finish them.

Every step is one short transaction guarded by a conditional ``UPDATE`` (the row must still be
in the state that was read), so several workers, threads or processes never run one job twice
at the same time. On PostgreSQL the claim also reads with ``FOR UPDATE SKIP LOCKED``; SQLite
serialises writers (``BEGIN IMMEDIATE``). A worker killed mid-job leaves its job ``running``:
once its lease expires another worker (or the restarted one) takes it again, and the result is
unique per job, so it is never stored twice.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prescreen.domain import (
    OPEN_JOB_STATES,
    DeliveryKind,
    DeliveryState,
    DicomHeader,
    Finding,
    InstanceRef,
    JobState,
    OrderPriority,
    SeriesRef,
    StudyStatus,
    points_json,
)
from prescreen.store.schema import Delivery, Instance, Job, Result, Series, Study

SCREENED_FIRST = tuple(p.value for p in OrderPriority if p.screened_first)
"""Stored order priorities whose studies are screened first."""


def changed(result: Any) -> int:
    """Rows an ``UPDATE`` changed."""
    return int(cast(CursorResult[Any], result).rowcount)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker holds: the series to screen, its files and the DICOM headers read at receipt."""

    id: str
    series: SeriesRef
    attempts: int
    files: tuple[InstanceRef, ...]
    headers: dict[str, DicomHeader]

    @property
    def study_id(self) -> str:
        return self.series.study_id


@dataclass(frozen=True)
class Outcome:
    """How a job ended; ``finding`` when it was screened."""

    state: JobState
    reason: str | None = None
    finding: Finding | None = None


def worker_name() -> str:
    """``host:pid:random``: unique per worker, and tells which process on which host holds a lock."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _dead_here(locked_by: str | None) -> bool:
    """Whether a lock holder ran on this host in a process that is gone."""
    host, _, rest = (locked_by or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))  # killed but not yet reaped by its parent


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def release_dead_locks(sessions: sessionmaker[Session]) -> int:
    """Give back jobs and deliveries held by processes of this host that died (SIGKILL, power
    loss): they run again at once instead of after their lease. Returns how many."""
    released = 0
    with sessions.begin() as session:
        busy_states: tuple[tuple[type[Job] | type[Delivery], str], ...] = (
            (Job, JobState.RUNNING),
            (Delivery, DeliveryState.SENDING),
        )
        for table, busy in busy_states:
            held = session.execute(select(table.id, table.locked_by).where(table.state == busy)).all()
            dead = [row.id for row in held if _dead_here(row.locked_by)]
            if dead:
                result = session.execute(
                    update(table)
                    .where(table.id.in_(dead), table.state == busy)
                    .values(
                        state=JobState.PENDING if table is Job else DeliveryState.PENDING,
                        locked_by=None,
                        locked_at=None,
                    )
                )
                released += changed(result)
    return released


def complete_studies(
    sessions: sessionmaker[Session],
    quiet_seconds: float,
    *,
    forward_to: str | Sequence[str] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Move studies quiet for ``quiet_seconds`` from ``received`` on; returns their ids.

    A service makes one screening job per series (status ``screening``); an edge node
    (``forward_to``: its uplink, or uplinks in order of preference) instead queues one forwarding
    delivery for the first uplink (status ``forwarding``); the outbox picks the uplink at send time.
    """
    uplinks = [forward_to] if isinstance(forward_to, str) else list(forward_to or [])
    destination = uplinks[0] if uplinks else None
    now = now or utcnow()
    cutoff = now - timedelta(seconds=quiet_seconds)
    with sessions.begin() as session:
        ready = session.execute(
            select(Study.id, Study.last_instance_at)
            .where(
                Study.status == StudyStatus.RECEIVED, or_(Study.last_instance_at <= cutoff, Study.complete_at <= now)
            )
            .order_by(Study.last_instance_at)
            .limit(200)
        ).all()
    moved: list[str] = []
    for study_id, last_instance_at in ready:
        with sessions.begin() as session:
            claimed = session.execute(
                update(Study)
                .where(
                    Study.id == study_id,
                    Study.status == StudyStatus.RECEIVED,
                    Study.last_instance_at == last_instance_at,
                )
                .values(status=StudyStatus.FORWARDING if destination else StudyStatus.SCREENING, status_reason=None)
            )
            if changed(claimed) != 1:
                continue  # a late instance arrived, or another worker moved it
            if destination:
                session.add(Delivery(study_id=study_id, kind=DeliveryKind.FORWARD, destination=destination))
            else:
                for series_id in session.scalars(select(Series.id).where(Series.study_id == study_id)):
                    session.add(Job(series_id=series_id, state=JobState.PENDING))
        moved.append(study_id)
    return moved


def claim_job(
    sessions: sessionmaker[Session],
    worker: str,
    *,
    lease_seconds: float,
    max_attempts: int | None = None,
    now: datetime | None = None,
) -> ClaimedJob | None:
    """Take the next runnable job (urgent studies first, then oldest), or ``None``.

    Runnable: ``pending`` and not deferred, or ``running`` with an expired lease; and, with
    ``max_attempts``, not yet tried that often (:func:`fail_exhausted_jobs` ends those).
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    with sessions.begin() as session:
        urgent = case((Study.order_priority.in_(SCREENED_FIRST), 0), else_=1)
        query = (
            select(Job.id, Job.state, Job.attempts)
            .join(Series, Series.id == Job.series_id)
            .join(Study, Study.id == Series.study_id)
            .where(
                or_(
                    and_(Job.state == JobState.PENDING, or_(Job.not_before.is_(None), Job.not_before <= now)),
                    and_(Job.state == JobState.RUNNING, Job.locked_at < stale),
                ),
                Job.attempts < (max_attempts if max_attempts is not None else 2**31 - 1),
            )
            .order_by(urgent, Job.created_at)
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(of=Job, skip_locked=True)
        row = session.execute(query).first()
        if row is None:
            return None
        taken = session.execute(
            update(Job)
            .where(Job.id == row.id, Job.state == row.state, Job.attempts == row.attempts)
            .values(state=JobState.RUNNING, locked_by=worker, locked_at=now, attempts=Job.attempts + 1)
        )
        if changed(taken) != 1:
            return None
        series = session.execute(
            select(Series.id, Series.series_uid, Series.study_id, Series.modality, Series.body_part)
            .join(Job, Job.series_id == Series.id)
            .where(Job.id == row.id)
        ).one()
        ref = SeriesRef(series.id, series.series_uid, series.study_id, series.modality, series.body_part)
        instances = session.execute(
            select(Instance.file_name, Instance.sop_instance_uid, Instance.blob_key, Instance.sop_class_uid)
            .where(Instance.series_id == series.id)
            .order_by(Instance.file_name, Instance.received_at)
        ).all()
        files = tuple(InstanceRef(name or f"{sop}.dcm", key) for name, sop, key, _ in instances)
        headers = {
            name or f"{sop}.dcm": DicomHeader(sop_class, ref.modality, ref.body_part)
            for name, sop, _, sop_class in instances
            if sop_class  # only DICOM instances have one; a WFDB upload has none
        }
        return ClaimedJob(row.id, ref, row.attempts + 1, files, headers)


def report_progress(sessions: sessionmaker[Session], job: ClaimedJob, worker: str, fraction: float) -> bool:
    """Record how much of a long analysis is done and renew the job's lease (a 24-hour record may
    take longer than one lease). ``False`` when the job is no longer this worker's."""
    with sessions.begin() as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.RUNNING, Job.locked_by == worker)
            .values(progress=min(1.0, max(0.0, float(fraction))), locked_at=utcnow())
        )
        return changed(done) == 1


def defer_job(sessions: sessionmaker[Session], job: ClaimedJob, worker: str, reason: str, delay_seconds: float) -> bool:
    """Give a job back after a transient failure, to run again after ``delay_seconds``."""
    with sessions.begin() as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.RUNNING, Job.locked_by == worker)
            .values(
                state=JobState.PENDING,
                locked_by=None,
                last_error=reason,
                not_before=utcnow() + timedelta(seconds=delay_seconds),
            )
        )
        return changed(done) == 1


def finish_job(
    sessions: sessionmaker[Session],
    job: ClaimedJob,
    worker: str,
    outcome: Outcome,
    *,
    sr_destinations: Iterable[str] = (),
) -> str | None:
    """Record a job's outcome and, when it was the study's last open job, the study's status.

    The result row is unique per job: a job finished twice (a lease that expired under a slow
    worker) stores one result. Returns the study's new status when it changed, else ``None``.
    When a study ends ``screened``, one SR delivery per destination is queued in the same
    transaction.
    """
    now = utcnow()
    try:
        with sessions.begin() as session:
            mine = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == JobState.RUNNING, Job.locked_by == worker)
                .values(state=outcome.state, last_error=outcome.reason, finished_at=now, locked_by=None)
            )
            if changed(mine) != 1:
                raise _LeaseLost  # another worker took the job after this one's lease expired
            if outcome.finding is not None:
                session.add(_result_row(job, outcome.finding))
            session.flush()
            return _settle_study(session, job.study_id, list(sr_destinations), now)
    except (IntegrityError, _LeaseLost):
        return None  # the job is (or will be) finished by the worker that holds it


def finding_columns(finding: Finding) -> dict[str, Any]:
    """The columns a stored finding shares with a shadow finding (plain floats, not numpy scalars)."""
    return {
        "task": finding.task,
        "model_name": finding.model_name,
        "model_version": finding.model_version,
        "flagged": finding.flagged,
        "label": finding.label,
        "score": float(finding.score),
        "threshold": float(finding.threshold),
        "probabilities": {k: float(v) for k, v in finding.probabilities.items()},
        "operating_points": points_json(finding),
        "seconds": finding.seconds,
        "summary": finding.summary,
    }


def _result_row(job: ClaimedJob, finding: Finding) -> Result:
    return Result(
        job_id=job.id,
        series_id=job.series.id,
        instance_uid=finding.instance_uid,
        instances_screened=finding.instances_screened,
        instances_total=finding.instances_total,
        **finding_columns(finding),
    )


class _LeaseLost(Exception):
    """Raised inside a transaction to roll it back."""


def fail_exhausted_jobs(
    sessions: sessionmaker[Session],
    *,
    lease_seconds: float,
    max_attempts: int,
    sr_destinations: Iterable[str] = (),
    now: datetime | None = None,
) -> int:
    """Fail jobs that used up their attempts while their worker died (a series that crashes the
    process or exhausts its memory would otherwise be retried for ever). Returns how many."""
    now = now or utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.state, Job.attempts, Series.study_id)
            .join(Series, Series.id == Job.series_id)
            .where(
                Job.attempts >= max_attempts,
                or_(Job.state == JobState.PENDING, and_(Job.state == JobState.RUNNING, Job.locked_at < stale)),
            )
        ).all()
    failed = 0
    for job_id, state, attempts, study_id in rows:
        reason = f"the screening process stopped during each of {attempts} attempts (a crash or out of memory)"
        with sessions.begin() as session:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == state, Job.attempts == attempts)
                .values(state=JobState.FAILED, last_error=reason, finished_at=now, locked_by=None)
            )
            if changed(done) == 1:
                session.flush()
                _settle_study(session, study_id, list(sr_destinations), now)
                failed += 1
    return failed


def _settle_study(session: Session, study_id: str, sr_destinations: list[str], now: datetime) -> str | None:
    # lock the study: two last jobs finishing at once, or a late instance arriving, are serialised
    study = session.get(Study, study_id, with_for_update=True, populate_existing=True)
    if study is None or study.status != StudyStatus.SCREENING:
        return None  # re-opened by a late instance: its next round decides
    jobs_of_study = select(Job.id).join(Series, Series.id == Job.series_id).where(Series.study_id == study_id)
    open_jobs = session.scalar(select(func.count()).where(Job.id.in_(jobs_of_study), Job.state.in_(OPEN_JOB_STATES)))
    if open_jobs:
        return None
    latest = _latest_jobs(session, study_id)
    states = {state for state, _ in latest.values()}
    if JobState.DONE in states:
        status = StudyStatus.SCREENED
    elif JobState.FAILED in states:
        status = StudyStatus.FAILED
    else:
        status = StudyStatus.UNSCREENABLE
    reasons = sorted({reason for state, reason in latest.values() if state != JobState.DONE and reason})
    study.status = status
    study.status_reason = "; ".join(reasons)[:2000] or None
    study.screened_at = now
    if status == StudyStatus.SCREENED:
        for destination in sr_destinations:
            session.add(Delivery(study_id=study_id, kind=DeliveryKind.DICOM_SR, destination=destination))
    return status


def _latest_jobs(session: Session, study_id: str) -> dict[str, tuple[str, str | None]]:
    """The state and reason of the newest job of each series of a study."""
    rows = session.execute(
        select(Job.series_id, Job.state, Job.last_error)
        .join(Series, Series.id == Job.series_id)
        .where(Series.study_id == study_id)
        .order_by(Job.created_at)
    ).all()
    return {series_id: (state, reason) for series_id, state, reason in rows}
