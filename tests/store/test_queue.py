"""The durable screening queue and the outbox, on SQLite and PostgreSQL (``database_url``).

Studies become jobs after their quiet period (at once for an HTTP upload), urgent studies are
claimed first, outcomes settle the study, leases expire, dead workers' locks are released,
concurrent workers (threads, processes) never claim one job twice, and deliveries are retried
with backoff. The screening worker is driven with a fake ``screen`` function over real rows.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.domain import Finding, JobState
from prescreen.store import deliveries, queue
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, session_factory
from prescreen.store.deliveries import ClaimedDelivery, claim_delivery
from prescreen.store.ingest import InstanceMeta, Received, store_files, store_instance
from prescreen.store.queue import (
    ClaimedJob,
    Outcome,
    as_utc,
    claim_job,
    complete_studies,
    finish_job,
    release_dead_locks,
    utcnow,
    worker_name,
)
from prescreen.store.schema import Delivery, Job, Result, Series, Study

Sessions = sessionmaker[Session]
QUIET = 10.0
LEASE = 60.0
PENDING, RUNNING, DONE, UNSCREENABLE, FAILED = (
    JobState.PENDING,
    JobState.RUNNING,
    JobState.DONE,
    JobState.UNSCREENABLE,
    JobState.FAILED,
)
RESULT = Finding(
    task="ecg-rhythm",
    model_name="fake",
    model_version="0",
    flagged=True,
    label="af",
    score=0.9,
    threshold=0.5,
    probabilities={"af": 0.9, "normal": 0.1},
)


# --------------------------------------------------------------------------- helpers


def new_uid() -> str:
    return f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**20}"


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def put(
    sessions: Sessions,
    blobs: FileBlobStore,
    study_uid: str,
    series_uid: str,
    sop: str | None = None,
    *,
    priority: str | None = None,
) -> Received:
    """Store one (non-DICOM) instance under the given UIDs, as the listener would."""
    sop = sop or new_uid()
    meta = InstanceMeta(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop,
        modality="ECG",
        order_priority=priority,
        file_name=f"{sop}.dat",
    )
    return store_instance(sessions, blobs, f"bytes of {sop}".encode(), meta)


def study(sessions: Sessions, study_id: str) -> Study:
    with sessions() as s:
        got = s.get(Study, study_id)
        assert got is not None
        return got


def jobs_of(sessions: Sessions, study_id: str) -> list[Job]:
    with sessions() as s:
        return list(
            s.scalars(
                select(Job)
                .join(Series, Series.id == Job.series_id)
                .where(Series.study_id == study_id)
                .order_by(Job.created_at)
            )
        )


def job(sessions: Sessions, job_id: str) -> Job:
    with sessions() as s:
        got = s.get(Job, job_id)
        assert got is not None
        return got


def count(sessions: Sessions, model: type[Any], *where: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def make_screening_study(sessions: Sessions, blobs: FileBlobStore, n_series: int = 1) -> str:
    """A study of ``n_series`` series, complete: its jobs are pending."""
    study_uid = new_uid()
    first = put(sessions, blobs, study_uid, new_uid())
    for _ in range(n_series - 1):
        put(sessions, blobs, study_uid, new_uid())
    assert complete_studies(sessions, QUIET, now=later(QUIET + 1)) == [first.study_id]
    return first.study_id


def pending_jobs(sessions: Sessions, n: int) -> list[str]:
    """``n`` pending jobs (one series each) of one study in ``screening``, inserted directly."""
    with sessions.begin() as s:
        parent = Study(id=uuid.uuid4().hex, study_uid=new_uid(), status="screening")
        series = [Series(id=uuid.uuid4().hex, study_id=parent.id, series_uid=new_uid()) for _ in range(n)]
        jobs = [Job(id=uuid.uuid4().hex, series_id=one.id, state=PENDING) for one in series]
        s.add(parent)
        s.flush()
        s.add_all(series)
        s.flush()
        s.add_all(jobs)
        return [one.id for one in jobs]


def claim(sessions: Sessions, worker: str = "w", now: datetime | None = None) -> ClaimedJob:
    got = claim_job(sessions, worker, lease_seconds=LEASE, now=now)
    assert got is not None
    return got


def dialect(sessions: Sessions) -> str:
    with sessions() as s:
        return s.get_bind().dialect.name


# --------------------------------------------------------------------------- studies become jobs


def test_study_becomes_one_job_per_series_only_after_the_quiet_period(sessions: Sessions, blobs: FileBlobStore) -> None:
    study_uid, series_a, series_b = new_uid(), new_uid(), new_uid()
    first = put(sessions, blobs, study_uid, series_a)
    put(sessions, blobs, study_uid, series_a)
    put(sessions, blobs, study_uid, series_b)

    assert complete_studies(sessions, QUIET, now=later(QUIET / 2)) == []
    assert study(sessions, first.study_id).status == "received"
    assert jobs_of(sessions, first.study_id) == []

    assert complete_studies(sessions, QUIET, now=later(QUIET + 1)) == [first.study_id]
    assert study(sessions, first.study_id).status == "screening"
    jobs = jobs_of(sessions, first.study_id)
    assert len(jobs) == 2 and {j.state for j in jobs} == {PENDING}
    with sessions() as s:
        by_series = dict(s.execute(select(Series.series_uid, Series.id)).all())
    assert {j.series_id for j in jobs} == {by_series[series_a], by_series[series_b]}

    assert complete_studies(sessions, QUIET, now=later(QUIET + 1)) == []  # no second set of jobs
    assert len(jobs_of(sessions, first.study_id)) == 2


def test_late_instance_reopens_a_screened_study_for_a_new_round(sessions: Sessions, blobs: FileBlobStore) -> None:
    study_uid, series_uid = new_uid(), new_uid()
    study_id = put(sessions, blobs, study_uid, series_uid).study_id
    complete_studies(sessions, QUIET, now=later(QUIET + 1))
    first = claim(sessions)
    assert len(first.files) == 1
    assert finish_job(sessions, first, "w", Outcome(DONE, finding=RESULT)) == "screened"

    late = put(sessions, blobs, study_uid, series_uid)
    assert not late.duplicate and late.study_id == study_id
    assert study(sessions, study_id).status == "received"
    assert complete_studies(sessions, QUIET, now=later(QUIET / 2)) == []  # the quiet period restarts

    assert complete_studies(sessions, QUIET, now=later(QUIET + 1)) == [study_id]
    assert study(sessions, study_id).status == "screening"
    second = claim(sessions)
    assert second.id != first.id and second.series.id == first.series.id
    assert len(second.files) == 2  # the new round screens the whole series, late instance included
    assert finish_job(sessions, second, "w", Outcome(DONE, finding=RESULT)) == "screened"
    assert count(sessions, Result) == 2
    assert [j.state for j in jobs_of(sessions, study_id)] == [DONE, DONE]


def test_late_instance_while_screening_leaves_the_study_to_the_next_round(
    sessions: Sessions, blobs: FileBlobStore
) -> None:
    study_uid, series_uid = new_uid(), new_uid()
    study_id = put(sessions, blobs, study_uid, series_uid).study_id
    complete_studies(sessions, QUIET, now=later(QUIET + 1))
    running = claim(sessions)
    put(sessions, blobs, study_uid, series_uid)  # arrives while the job runs
    assert finish_job(sessions, running, "w", Outcome(DONE, finding=RESULT)) is None
    assert study(sessions, study_id).status == "received"
    assert complete_studies(sessions, QUIET, now=later(QUIET + 1)) == [study_id]
    again = claim(sessions)
    assert finish_job(sessions, again, "w", Outcome(DONE, finding=RESULT)) == "screened"


def test_http_upload_is_complete_at_once(sessions: Sessions, blobs: FileBlobStore) -> None:
    received = store_files(sessions, blobs, {"A.hea": b"A 1 500 10\nA.dat 16 1000 16 0 0 0 0 I\n", "A.dat": b"\0" * 20})
    study_id = received[0].study_id
    assert {r.study_id for r in received} == {study_id}
    assert complete_studies(sessions, 3600.0) == [study_id]  # no hour-long quiet period to wait for
    got = claim(sessions)
    assert got.series.modality == "ECG" and [f.file_name for f in got.files] == ["A.dat", "A.hea"]


def test_urgent_study_is_claimed_before_an_older_routine_one(sessions: Sessions, blobs: FileBlobStore) -> None:
    routine = put(sessions, blobs, new_uid(), new_uid(), priority="ROUTINE").study_id
    complete_studies(sessions, QUIET, now=later(QUIET + 1))
    stat = put(sessions, blobs, new_uid(), new_uid(), priority="STAT").study_id
    complete_studies(sessions, QUIET, now=later(QUIET + 1))
    assert jobs_of(sessions, routine)[0].created_at <= jobs_of(sessions, stat)[0].created_at
    assert [claim(sessions).study_id, claim(sessions).study_id] == [stat, routine]
    assert claim_job(sessions, "w", lease_seconds=LEASE) is None


# --------------------------------------------------------------------------- outcomes settle the study


def test_screened_study_gets_its_result_and_one_sr_delivery_per_destination(
    sessions: Sessions, blobs: FileBlobStore
) -> None:
    study_id = make_screening_study(sessions, blobs)
    got = claim(sessions)
    status = finish_job(sessions, got, "w", Outcome(DONE, finding=RESULT), sr_destinations=["A@h:1", "B@h2:104"])
    assert status == "screened"
    done = job(sessions, got.id)
    assert done.state == DONE and done.finished_at is not None and done.locked_by is None
    with sessions() as s:
        result = s.scalars(select(Result)).one()
        deliveries = s.scalars(select(Delivery).order_by(Delivery.destination)).all()
    assert (result.job_id, result.series_id, result.label, result.flagged) == (got.id, got.series.id, "af", True)
    assert result.probabilities == {"af": 0.9, "normal": 0.1}
    settled = study(sessions, study_id)
    assert settled.status == "screened" and settled.screened_at is not None and settled.status_reason is None
    assert [(d.kind, d.destination, d.state, d.study_id) for d in deliveries] == [
        ("dicom-sr", "A@h:1", PENDING, study_id),
        ("dicom-sr", "B@h2:104", PENDING, study_id),
    ]


def test_all_series_unscreenable_makes_the_study_unscreenable_without_sr(
    sessions: Sessions, blobs: FileBlobStore
) -> None:
    study_id = make_screening_study(sessions, blobs, n_series=2)
    first, second = claim(sessions), claim(sessions)
    assert finish_job(sessions, first, "w", Outcome(UNSCREENABLE, "no model for US"), sr_destinations=["A@h:1"]) is None
    status = finish_job(sessions, second, "w", Outcome(UNSCREENABLE, "no waveform"), sr_destinations=["A@h:1"])
    assert status == "unscreenable"
    settled = study(sessions, study_id)
    assert settled.status == "unscreenable" and settled.screened_at is not None
    assert settled.status_reason == "no model for US; no waveform"
    assert count(sessions, Result) == 0 and count(sessions, Delivery) == 0


def test_failed_job_fails_the_study_with_its_reason(sessions: Sessions, blobs: FileBlobStore) -> None:
    study_id = make_screening_study(sessions, blobs)
    got = claim(sessions)
    assert finish_job(sessions, got, "w", Outcome(FAILED, "a stored file is missing"), sr_destinations=["A@h:1"]) == (
        "failed"
    )
    settled = study(sessions, study_id)
    assert (settled.status, settled.status_reason) == ("failed", "a stored file is missing")
    assert job(sessions, got.id).last_error == "a stored file is missing"
    assert count(sessions, Delivery) == 0


def test_study_of_two_series_settles_only_after_both_jobs(sessions: Sessions, blobs: FileBlobStore) -> None:
    study_id = make_screening_study(sessions, blobs, n_series=2)
    first, second = claim(sessions), claim(sessions)
    assert first.series.id != second.series.id
    assert finish_job(sessions, first, "w", Outcome(DONE, finding=RESULT), sr_destinations=["A@h:1"]) is None
    assert study(sessions, study_id).status == "screening" and count(sessions, Delivery) == 0
    assert finish_job(sessions, second, "w", Outcome(UNSCREENABLE, "blank"), sr_destinations=["A@h:1"]) == "screened"
    settled = study(sessions, study_id)
    assert settled.status == "screened" and settled.status_reason == "blank"
    assert count(sessions, Delivery) == 1


@pytest.mark.parametrize("stale_first", [True, False], ids=["stale-worker-first", "new-worker-first"])
def test_job_finished_twice_stores_one_result(sessions: Sessions, blobs: FileBlobStore, stale_first: bool) -> None:
    study_id = make_screening_study(sessions, blobs)
    slow = claim(sessions, "slow")
    retaken = claim(sessions, "fast", now=later(LEASE + 1))  # the slow worker's lease expired
    assert retaken.id == slow.id and retaken.attempts == 2
    order = [(slow, "slow"), (retaken, "fast")] if stale_first else [(retaken, "fast"), (slow, "slow")]
    statuses = [
        finish_job(sessions, held, worker, Outcome(DONE, finding=RESULT), sr_destinations=["A@h:1"])
        for held, worker in order
    ]
    # only the worker holding the job may finish it: the slow one's late result is dropped
    assert statuses == ([None, "screened"] if stale_first else ["screened", None])
    assert count(sessions, Result) == 1 and count(sessions, Delivery) == 1
    assert job(sessions, slow.id).state == DONE and study(sessions, study_id).status == "screened"


# --------------------------------------------------------------------------- leases and dead workers


def test_running_job_is_retaken_only_after_its_lease(sessions: Sessions, blobs: FileBlobStore) -> None:
    make_screening_study(sessions, blobs)
    start = utcnow()
    first = claim(sessions, "one", now=start)
    assert job(sessions, first.id).state == RUNNING
    assert claim_job(sessions, "two", lease_seconds=LEASE, now=start + timedelta(seconds=LEASE - 1)) is None
    again = claim(sessions, "two", now=start + timedelta(seconds=LEASE + 1))
    assert (again.id, again.attempts) == (first.id, 2)
    held = job(sessions, first.id)
    assert (held.state, held.locked_by, held.attempts) == (RUNNING, "two", 2)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process
    return child.pid


def test_release_dead_locks_frees_only_dead_processes_of_this_host(sessions: Sessions) -> None:
    host, dead = socket.gethostname(), _dead_pid()
    holders = [f"{host}:{dead}:x", f"{host}:{os.getpid()}:x", f"another-{host}:{dead}:x"]
    ids = pending_jobs(sessions, 3)
    claimed = {claim(sessions, name).id: name for name in holders}
    assert sorted(claimed) == sorted(ids)
    with sessions.begin() as s:
        s.add(Delivery(study_id=s.scalars(select(Study.id)).one(), kind="dicom-sr", destination="A@h:1"))
    assert claim_delivery(sessions, holders[0]) is not None

    assert release_dead_locks(sessions) == 2  # the dead process's job and delivery
    states = {name: (job(sessions, job_id).state, job(sessions, job_id).locked_by) for job_id, name in claimed.items()}
    assert states == {holders[0]: (PENDING, None), holders[1]: (RUNNING, holders[1]), holders[2]: (RUNNING, holders[2])}
    with sessions() as s:
        assert s.scalars(select(Delivery.state)).one() == PENDING
    assert claim(sessions).id == next(j for j, name in claimed.items() if name == holders[0])  # runs again at once
    assert release_dead_locks(sessions) == 0


# --------------------------------------------------------------------------- concurrent workers


@pytest.mark.parametrize("threads", [2, 4])
def test_concurrent_threads_claim_every_job_exactly_once(sessions: Sessions, threads: int) -> None:
    ids = pending_jobs(sessions, 40)
    start = threading.Barrier(threads)
    taken: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(mine: list[str]) -> None:
        try:
            name = worker_name()
            start.wait(timeout=30)
            while (got := claim_job(sessions, name, lease_seconds=LEASE)) is not None:
                mine.append(got.id)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(mine,)) for mine in taken]
    for one in workers:
        one.start()
    for one in workers:
        one.join(timeout=60)
    assert not errors
    claimed = [job_id for mine in taken for job_id in mine]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert sorted(claimed) == sorted(ids), "a job was never claimed"
    assert count(sessions, Job, Job.state == RUNNING, Job.attempts == 1) == 40


def _claim_in_process(url: str, start: Any, out: Any) -> None:
    """Child process: its own engine; claims until the queue is empty; sends back the ids."""
    engine = make_engine(url)
    sessions = session_factory(engine)
    name, mine = worker_name(), []
    try:
        start.wait(60)
        while (got := claim_job(sessions, name, lease_seconds=LEASE)) is not None:
            mine.append(got.id)
    finally:
        engine.dispose()
        out.put(mine)


def test_concurrent_processes_claim_every_job_exactly_once(sessions: Sessions, database_url: str) -> None:
    ids = pending_jobs(sessions, 100)
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(2), context.Queue()
    children = [context.Process(target=_claim_in_process, args=(database_url, start, out)) for _ in range(2)]
    for child in children:
        child.start()
    try:
        claimed = [job_id for _ in children for job_id in out.get(timeout=90)]
    finally:
        for child in children:
            child.join(timeout=30)
    assert [child.exitcode for child in children] == [0, 0]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert sorted(claimed) == sorted(ids), "a job was never claimed"


def _hold_settle_open(
    monkeypatch: pytest.MonkeyPatch, sessions: Sessions, while_open: Callable[[], object]
) -> Callable[[], None]:
    """Make the next ``finish_job`` run ``while_open`` in another thread after deciding the study's
    status and before committing (on SQLite, where writers are serialised, that thread can only go
    on after the commit). Returns a function that waits for that thread and re-raises its error."""
    original = queue._settle_study
    wait = 0.3 if dialect(sessions) == "sqlite" else 20.0
    started: list[threading.Thread] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            while_open()
        except BaseException as exc:
            errors.append(exc)

    def settle(session: Session, study_id: str, destinations: list[str], now: datetime) -> str | None:
        status = original(session, study_id, destinations, now)
        if not started:
            started.append(threading.Thread(target=run))
            started[0].start()
            started[0].join(wait)
        return status

    def done() -> None:
        for thread in started:
            thread.join(30)
        assert started and not started[0].is_alive()
        if errors:
            raise errors[0]

    monkeypatch.setattr(queue, "_settle_study", settle)
    return done


def test_last_two_jobs_finishing_at_once_settle_the_study(
    monkeypatch: pytest.MonkeyPatch, sessions: Sessions, blobs: FileBlobStore
) -> None:
    """Settling locks the study row: without it, on PostgreSQL each of two workers finishing the last
    two jobs at once still sees the other's job running, and the study stays 'screening'."""
    study_id = make_screening_study(sessions, blobs, n_series=2)
    first, second = claim(sessions, "one"), claim(sessions, "two")
    statuses: list[str | None] = []
    done = _hold_settle_open(
        monkeypatch,
        sessions,
        lambda: statuses.append(finish_job(sessions, second, "two", Outcome(DONE, finding=RESULT))),
    )
    statuses.append(finish_job(sessions, first, "one", Outcome(DONE, finding=RESULT)))
    done()
    assert sorted(statuses, key=str) == sorted(["screened", None], key=str)
    assert study(sessions, study_id).status == "screened"


def test_late_instance_during_the_last_finish_reopens_the_study(
    monkeypatch: pytest.MonkeyPatch, sessions: Sessions, blobs: FileBlobStore
) -> None:
    """Settling re-reads the locked study: a late instance stored meanwhile keeps it re-opened."""
    study_uid, series_uid = new_uid(), new_uid()
    study_id = put(sessions, blobs, study_uid, series_uid).study_id
    complete_studies(sessions, QUIET, now=later(QUIET + 1))
    running = claim(sessions)
    done = _hold_settle_open(monkeypatch, sessions, lambda: put(sessions, blobs, study_uid, series_uid))
    finish_job(sessions, running, "w", Outcome(DONE, finding=RESULT))
    done()
    assert study(sessions, study_id).status == "received"
    assert complete_studies(sessions, QUIET, now=later(QUIET + 1)) == [study_id]  # screened again, with it


# --------------------------------------------------------------------------- the outbox


def queue_delivery(sessions: Sessions) -> str:
    with sessions.begin() as s:
        parent = Study(study_uid=new_uid(), status="screened")
        s.add(parent)
        s.flush()
        delivery = Delivery(study_id=parent.id, kind="dicom-sr", destination="A@h:1")
        s.add(delivery)
        s.flush()
        return delivery.id


def delivery_row(sessions: Sessions, delivery_id: str) -> Delivery:
    with sessions() as s:
        got = s.get(Delivery, delivery_id)
        assert got is not None
        return got


def make_due(sessions: Sessions, delivery_id: str) -> None:
    with sessions.begin() as s:
        s.execute(update(Delivery).where(Delivery.id == delivery_id).values(next_attempt_at=later(-1)))


OUTBOX = Settings(delivery_max_attempts=3, delivery_backoff_seconds=1)


def finish_delivery(
    sessions: Sessions, delivery: ClaimedDelivery, error: str | None, settings: Settings, *, worker: str | None = None
) -> str:
    """The outbox's bookkeeping after one attempt: the pipeline's decision, then the store's update."""
    from prescreen.pipeline.outbox import delivery_outcome

    outcome = delivery_outcome(
        delivery.attempts,
        error,
        max_attempts=settings.delivery_max_attempts,
        first_backoff=settings.delivery_backoff_seconds,
        permanent=False,
        now=utcnow(),
    )
    return deliveries.finish_delivery(sessions, delivery, outcome, worker=worker)


def fail_once(sessions: Sessions, delivery_id: str) -> str:
    """Claim the delivery, fail it, make it due again; returns its state after the failure."""
    got = claim_delivery(sessions, "w")
    assert got is not None and got.id == delivery_id
    state = finish_delivery(sessions, got, "association refused", OUTBOX)
    make_due(sessions, delivery_id)
    return state


def test_failed_delivery_waits_for_its_next_attempt(sessions: Sessions) -> None:
    delivery_id = queue_delivery(sessions)
    got = claim_delivery(sessions, "w")
    assert got is not None and got.id == delivery_id
    row = delivery_row(sessions, delivery_id)
    assert (row.state, row.attempts, row.locked_by) == ("sending", 1, "w")
    assert claim_delivery(sessions, "other") is None  # being sent

    before = utcnow()
    assert finish_delivery(sessions, got, "association refused", OUTBOX) == PENDING
    after = utcnow()
    row = delivery_row(sessions, delivery_id)
    assert (row.state, row.attempts, row.last_error, row.locked_by) == (PENDING, 1, "association refused", None)
    # due delivery_backoff_seconds (1 s) after the failure was recorded, an instant between before and after
    backoff = timedelta(seconds=OUTBOX.delivery_backoff_seconds)
    assert row.next_attempt_at is not None and before + backoff <= as_utc(row.next_attempt_at) <= after + backoff
    assert claim_delivery(sessions, "w") is None  # not before its next attempt

    make_due(sessions, delivery_id)
    again = claim_delivery(sessions, "w")
    assert again is not None and again.id == delivery_id
    assert delivery_row(sessions, delivery_id).attempts == 2


def test_failing_delivery_is_given_up_and_not_claimed_again(sessions: Sessions) -> None:
    delivery_id = queue_delivery(sessions)
    states = [fail_once(sessions, delivery_id) for _ in range(OUTBOX.delivery_max_attempts)]
    assert states == [PENDING, PENDING, "failed"]  # delivery_max_attempts=3: given up at the third failure
    row = delivery_row(sessions, delivery_id)
    assert (row.state, row.last_error, row.locked_by) == ("failed", "association refused", None)
    assert row.attempts == OUTBOX.delivery_max_attempts == 3
    assert claim_delivery(sessions, "w") is None


def test_claimed_delivery_reports_the_stored_attempt_number(sessions: Sessions) -> None:
    delivery_id = queue_delivery(sessions)
    first = claim_delivery(sessions, "w")
    assert first is not None
    assert (first.attempts, delivery_row(sessions, delivery_id).attempts) == (1, 1)


def test_delivery_backs_off_1s_then_2s_and_is_given_up_after_max_attempts(sessions: Sessions) -> None:
    delivery_id = queue_delivery(sessions)
    delays, states = [], []
    for _ in range(OUTBOX.delivery_max_attempts):
        got = claim_delivery(sessions, "w")
        if got is None:
            states.append("not claimable")
            continue
        before = utcnow()
        states.append(finish_delivery(sessions, got, "association refused", OUTBOX))
        row = delivery_row(sessions, delivery_id)
        if row.next_attempt_at is not None and row.state == PENDING:
            delays.append(round((as_utc(row.next_attempt_at) - before).total_seconds()))
        make_due(sessions, delivery_id)
    assert (states, delays) == ([PENDING, PENDING, "failed"], [1, 2])  # delivery_max_attempts=3, doubling backoff
    assert delivery_row(sessions, delivery_id).attempts == 3


def test_successful_delivery_is_delivered_once(sessions: Sessions) -> None:
    delivery_id = queue_delivery(sessions)
    assert fail_once(sessions, delivery_id) == PENDING
    second = claim_delivery(sessions, "w")
    assert isinstance(second, ClaimedDelivery) and second.id == delivery_id
    assert finish_delivery(sessions, second, None, OUTBOX) == "delivered"
    row = delivery_row(sessions, delivery_id)
    assert (row.state, row.attempts, row.last_error, row.locked_by) == ("delivered", 2, None, None)
    assert row.delivered_at is not None
    assert claim_delivery(sessions, "w") is None
