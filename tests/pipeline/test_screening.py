"""The screening step: a complete study's series is screened, recorded and settled; unsupported
studies end unscreenable; a crashing job is deferred, then failed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update

from prescreen.config import Settings
from prescreen.domain import Finding, JobState
from prescreen.pipeline.loop import StepLoop
from prescreen.pipeline.screening import Screen, ScreeningStep
from prescreen.store.blobs import FileBlobStore
from prescreen.store.ingest import store_files
from prescreen.store.queue import as_utc, utcnow
from prescreen.store.schema import Delivery, Job, Result
from tests.store.test_queue import Sessions, count, job, jobs_of, later, study

PENDING, UNSCREENABLE, FAILED = JobState.PENDING, JobState.UNSCREENABLE, JobState.FAILED


def screen_result() -> Finding:
    return Finding(
        task="ecg-rhythm",
        model_name="fake",
        model_version="0",
        flagged=True,
        label="af",
        score=0.875,
        probabilities={"af": 0.875, "normal": 0.125},
        threshold=0.5,
    )


def upload(sessions: Sessions, blobs: FileBlobStore) -> str:
    return store_files(sessions, blobs, {"A.hea": b"A 1 500 10\n", "A.dat": b"\1" * 20})[0].study_id


def worker_settings(**changes: Any) -> Settings:
    return Settings(study_quiet_seconds=0, job_max_attempts=2, sr_destinations=["A@h:1"], **changes)


def run_worker(sessions: Sessions, blobs: FileBlobStore, screen: Screen) -> StepLoop:
    """A loop of the screening step alone, run round by round (no thread)."""
    return StepLoop("screening", [ScreeningStep(sessions, blobs, screen, worker_settings())], poll_seconds=0.1)


def test_worker_screens_a_study(sessions: Sessions, blobs: FileBlobStore) -> None:
    study_id = upload(sessions, blobs)
    seen: list[dict[str, bytes]] = []

    def screen(files: Mapping[str, bytes], progress: Any = None) -> Finding:
        seen.append(dict(files))
        return screen_result()

    worker = run_worker(sessions, blobs, screen)
    assert worker.run_round() is True
    assert seen == [{"A.dat": b"\1" * 20, "A.hea": b"A 1 500 10\n"}]
    assert study(sessions, study_id).status == "screened"
    with sessions() as s:
        result = s.scalars(select(Result)).one()
        assert (result.label, result.score, result.model_name) == ("af", 0.875, "fake")
        assert s.scalars(select(Delivery.kind)).all() == ["dicom-sr"]
    assert worker.run_round() is False


def test_worker_marks_an_unsupported_study_unscreenable(sessions: Sessions, blobs: FileBlobStore) -> None:
    from prescreen.errors import UnsupportedStudyError

    study_id = upload(sessions, blobs)

    def screen(files: Mapping[str, bytes], progress: Any = None) -> Finding:
        raise UnsupportedStudyError("no model screens this record")

    assert run_worker(sessions, blobs, screen).run_round() is True
    settled = study(sessions, study_id)
    assert (settled.status, settled.status_reason) == ("unscreenable", "no model screens this record")
    assert [j.state for j in jobs_of(sessions, study_id)] == [UNSCREENABLE]
    assert count(sessions, Result) == 0 and count(sessions, Delivery) == 0


def test_worker_defers_a_crashing_job_then_fails_it(sessions: Sessions, blobs: FileBlobStore) -> None:
    study_id = upload(sessions, blobs)
    calls: list[int] = []

    def screen(files: Mapping[str, bytes], progress: Any = None) -> Finding:
        calls.append(1)
        raise RuntimeError("onnxruntime blew up")

    worker = run_worker(sessions, blobs, screen)
    before = utcnow()
    assert worker.run_round() is True
    (deferred,) = jobs_of(sessions, study_id)
    assert (deferred.state, deferred.attempts, deferred.last_error) == (PENDING, 1, "RuntimeError on attempt 1")
    assert deferred.not_before is not None and as_utc(deferred.not_before) > before
    assert study(sessions, study_id).status == "screening"
    assert worker.run_round() is False  # not before its retry time

    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == deferred.id).values(not_before=later(-1)))
    assert worker.run_round() is True  # attempt 2 of job_max_attempts=2: given up
    failed = job(sessions, deferred.id)
    assert (failed.state, failed.attempts, failed.last_error) == (FAILED, 2, "RuntimeError on attempt 2")
    settled = study(sessions, study_id)
    assert (settled.status, settled.status_reason) == ("failed", "RuntimeError on attempt 2")
    assert len(calls) == 2 and count(sessions, Delivery) == 0
    assert worker.run_round() is False
