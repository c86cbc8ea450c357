"""``store_stats``: the aggregate counts behind the ``prescreen_*`` Prometheus series, on a real migrated
database (SQLite, and PostgreSQL where available: the ``sessions`` fixture).

Rows are made the way production makes them: studies stored by ``store_files``, completed, their
jobs claimed and finished with a finding (or a failure), routed into worklists by ``triage_pending``,
escalated by ``record_escalations``, shadow findings by ``record_shadow``. Alarms have no writer in
the store yet and are added as rows.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.domain import Finding, JobState, OperatingPoint
from prescreen.pipeline.triage import triage_pending
from prescreen.store.blobs import BlobStore
from prescreen.store.ingest import store_files
from prescreen.store.queue import Outcome, claim_job, complete_studies, finish_job, utcnow, worker_name
from prescreen.store.schema import Job
from prescreen.store.schema_lifecycle import Alarm
from prescreen.store.shadow import record_shadow
from prescreen.store.sla import record_escalations
from prescreen.store.stats import LATENCY_BUCKETS, store_stats
from prescreen.triage.priority import Priority, SlaTargets
from prescreen.triage.rules import load_default_rules

Sessions = sessionmaker[Session]


def finding(
    task: str = "ecg-rhythm",
    *,
    label: str = "normal",
    score: float = 0.1,
    balanced: bool | None = False,
    safety: bool | None = False,
    seconds: float | None = 0.2,
    version: str = "v1",
) -> Finding:
    """A finding; ``balanced``/``safety`` None: a result without operating points (stored before them)."""
    points = (
        {}
        if balanced is None
        else {"balanced": OperatingPoint(0.5, balanced), "safety": OperatingPoint(0.2, bool(safety))}
    )
    return Finding(
        task=task,
        model_name=f"m-{task}",
        model_version=version,
        flagged=bool(balanced) if balanced is not None else score >= 0.5,
        label=label,
        score=score,
        threshold=0.5,
        probabilities={label: score},
        operating_points=points,
        seconds=seconds,
    )


def receive(sessions: Sessions, blobs: BlobStore, modality: str = "ECG") -> str:
    """Store a one-series upload (complete at once); its study id."""
    token = uuid.uuid4().hex.encode()
    stored = store_files(sessions, blobs, {"rec.hea": b"rec 1 500 5000\n" + token, "rec.dat": token}, modality=modality)
    return stored[0].study_id


def screen(sessions: Sessions, blobs: BlobStore, outcome: Outcome, modality: str = "ECG") -> str:
    """Receive a study and run its one job like a worker, ending with ``outcome``; its study id."""
    study_id = receive(sessions, blobs, modality)
    assert study_id in complete_studies(sessions, 0.0, now=utcnow() + timedelta(seconds=1))
    worker = worker_name()
    job = claim_job(sessions, worker, lease_seconds=60)
    assert job is not None and job.study_id == study_id
    finish_job(sessions, job, worker, outcome)
    return study_id


def done(f: Finding) -> Outcome:
    return Outcome(JobState.DONE, finding=f)


def test_an_empty_store_counts_nothing(sessions: Sessions) -> None:
    stats = store_stats(sessions)
    assert stats.studies_by_status == {} and stats.studies_screened == {} and stats.results == {}
    assert stats.flags == {} and stats.jobs == {} and stats.latency == {} and stats.worklist_open == {}
    assert stats.oldest_pending_seconds == 0.0


def test_studies_by_status_and_screened_per_task(sessions: Sessions, blobs: BlobStore) -> None:
    screen(sessions, blobs, done(finding()))
    screen(sessions, blobs, done(finding(label="af", score=0.9, balanced=True, safety=True)))
    screen(sessions, blobs, done(finding("chest-xray", label="pneumonia", score=0.8, balanced=True, safety=True)), "CR")
    screen(sessions, blobs, Outcome(JobState.UNSCREENABLE, reason="no model screens CT"), "CT")
    screen(sessions, blobs, Outcome(JobState.FAILED, reason="model crashed"))
    receive(sessions, blobs)  # complete, not yet a job: still "received"
    stats = store_stats(sessions)
    assert stats.studies_by_status == {"screened": 3, "unscreenable": 1, "failed": 1, "received": 1}
    assert stats.studies_screened == {"ecg-rhythm": 2, "chest-xray": 1}
    assert stats.results == {("ecg-rhythm", "v1"): 2, ("chest-xray", "v1"): 1}
    assert stats.jobs == {"done": 3, "unscreenable": 1, "failed": 1}


def test_flags_per_task_and_operating_point(sessions: Sessions, blobs: BlobStore) -> None:
    screen(sessions, blobs, done(finding(score=0.9, label="af", balanced=True, safety=True)))
    screen(sessions, blobs, done(finding(score=0.3, label="normal", balanced=False, safety=True)))  # safety only
    screen(sessions, blobs, done(finding(score=0.1, balanced=False, safety=False)))
    # results from before operating points: their one threshold decides at both points
    screen(sessions, blobs, done(finding(score=0.7, label="af", balanced=None, version="v0")))
    screen(sessions, blobs, done(finding(score=0.2, balanced=None, version="v0")))
    stats = store_stats(sessions)
    assert stats.flags == {("ecg-rhythm", "balanced"): 2, ("ecg-rhythm", "safety"): 3}
    assert stats.results == {("ecg-rhythm", "v1"): 3, ("ecg-rhythm", "v0"): 2}


def test_latency_histogram_is_cumulative_per_task(sessions: Sessions, blobs: BlobStore) -> None:
    observed = [0.04, 0.3, 0.3, 2.0, 45.0]
    for s in observed:
        screen(sessions, blobs, done(finding(seconds=s)))
    screen(sessions, blobs, done(finding(seconds=None)))  # not measured: not observed
    (task, histogram), *rest = store_stats(sessions).latency.items()
    assert task == "ecg-rhythm" and rest == []
    assert histogram.count == 5 and histogram.total == pytest.approx(sum(observed))
    assert histogram.cumulative == tuple(sum(s <= b for s in observed) for b in LATENCY_BUCKETS)
    assert histogram.cumulative[LATENCY_BUCKETS.index(0.5)] == 3 and histogram.cumulative[-1] == 4


def test_queue_depth_and_age_of_the_oldest_pending_job(sessions: Sessions, blobs: BlobStore) -> None:
    first, second = receive(sessions, blobs), receive(sessions, blobs)
    assert set(complete_studies(sessions, 0.0, now=utcnow() + timedelta(seconds=1))) == {first, second}
    created = utcnow() - timedelta(minutes=10)
    with sessions.begin() as s:
        s.execute(update(Job).values(created_at=created))
    worker = worker_name()
    assert claim_job(sessions, worker, lease_seconds=60) is not None
    stats = store_stats(sessions, now=created + timedelta(seconds=90))
    assert stats.jobs == {"pending": 1, "running": 1}
    assert stats.oldest_pending_seconds == pytest.approx(90.0, abs=0.01)


def test_worklist_items_overdue_escalations_and_breaches(sessions: Sessions, blobs: BlobStore) -> None:
    targets = SlaTargets()
    screen(sessions, blobs, done(finding(score=0.1)))  # → cardiology routine
    screen(sessions, blobs, done(finding(score=0.1)))
    screen(sessions, blobs, Outcome(JobState.UNSCREENABLE, reason="no model screens CT"), "CT")  # → general-radiology
    assert triage_pending(sessions, load_default_rules(), targets) == 3
    stats = store_stats(sessions)
    assert stats.worklist_open == {
        ("cardiology", "routine", "unread"): 2,
        ("general-radiology", "routine", "unread"): 1,
    }
    assert stats.worklist_overdue == {} and stats.escalations == {}
    later = utcnow() + targets.target(Priority.ROUTINE) + timedelta(minutes=1)
    assert len(record_escalations(sessions, targets, now=later)) == 3  # straight to 100 % (75 % is passed)
    stats = store_stats(sessions, now=later)
    assert stats.worklist_overdue == {("cardiology", "routine"): 2, ("general-radiology", "routine"): 1}
    assert stats.escalations == {("cardiology", "routine", 100): 2, ("general-radiology", "routine", 100): 1}


def test_alarms_and_shadow_findings(sessions: Sessions, blobs: BlobStore) -> None:
    screen(sessions, blobs, done(finding()))
    with sessions() as s:
        series_id = s.scalars(select(Job.series_id)).one()
    record_shadow(sessions, series_id, finding(version="v2"))
    record_shadow(sessions, series_id, finding(version="v2", score=0.8, balanced=True))
    with sessions.begin() as s:
        for kind in ("accuracy", "psi", "psi"):
            s.add(Alarm(kind=kind, task="ecg-rhythm", model_version="v1", institution="site-a", message="m"))
    stats = store_stats(sessions)
    assert stats.shadow_results == {("ecg-rhythm", "v2"): 2}
    assert stats.alarms == {("accuracy", "ecg-rhythm"): 1, ("psi", "ecg-rhythm"): 2}
    assert stats.results == {("ecg-rhythm", "v1"): 1}  # shadow findings are not results


def test_a_scrape_does_not_wait_for_a_writer(sessions: Sessions, blobs: BlobStore) -> None:
    """A write transaction holds SQLite's write lock (the service's engine begins every transaction
    with BEGIN IMMEDIATE, and waits up to 30 s for it): the scrape reads beside it, at once, and sees
    the last committed state."""
    screen(sessions, blobs, done(finding()))
    with sessions.begin() as writer:
        writer.execute(update(Job).values(last_error="held open by the test"))  # takes the write lock
        started = time.monotonic()
        stats = store_stats(sessions)
        waited = time.monotonic() - started
    assert waited < 5, f"the scrape waited {waited:.1f} s for the writer"
    assert stats.studies_screened == {"ecg-rhythm": 1}
