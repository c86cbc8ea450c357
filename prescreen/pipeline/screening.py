"""The screening step: studies quiet long enough become jobs (one per series); a worker claims a
job, reads its files from the blob store, screens them and records the outcome.

The queue lives in the database (:mod:`prescreen.store.queue`), so a killed process loses nothing:
its unfinished jobs are taken again once their lease has expired.

Shadow mode: when the task of a finished job has a shadow (candidate) model, the same files are
screened by it at the worker's next turn, after the triage step has routed the active finding,
and its finding is stored apart (:mod:`prescreen.store.shadow`); it never changes, delays or fails
the active result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.datasets.files import StudyFiles
from prescreen.domain import Finding, JobState
from prescreen.errors import (
    BlobNotFoundError,
    InvalidStudyError,
    NotAssessableError,
    UnknownTaskError,
    UnsupportedStudyError,
)
from prescreen.models.task import Progress
from prescreen.store.blobs import BlobStore
from prescreen.store.queue import (
    ClaimedJob,
    Outcome,
    claim_job,
    complete_studies,
    defer_job,
    fail_exhausted_jobs,
    finish_job,
    report_progress,
    worker_name,
)
from prescreen.store.shadow import record_shadow

log = logging.getLogger(__name__)
#: how often a long analysis' progress is written to its job
PROGRESS_SECONDS = 2.0


class Screen(Protocol):
    """Screens one series' files (``ScreeningEngine.screen``), telling ``progress`` how much of a
    long analysis is done."""

    def __call__(self, files: Mapping[str, bytes], *, progress: Progress | None = None) -> Finding: ...


ShadowScreen = Callable[[Mapping[str, bytes]], Finding]
"""A shadow model's screen of one series' files."""

ShadowScreens = Callable[[str], ShadowScreen | None]
"""The shadow model's screen of a task, ``None`` when the task has none (``ScreeningEngine.shadow_screen``)."""


def run_job(screen: Screen, blobs: BlobStore, job: ClaimedJob, progress: Progress | None = None) -> Outcome:
    """Screen the files of a job's series. Raises only on unexpected (maybe transient) errors."""
    try:
        files = {f.file_name: blobs.get(f.blob_key) for f in job.files}
    except BlobNotFoundError as exc:
        return Outcome(JobState.FAILED, f"a stored file is missing: {exc}")
    if not files:
        return Outcome(JobState.UNSCREENABLE, "the series has no instance")
    try:
        finding = screen(StudyFiles(files, job.headers), progress=progress)
    except (UnsupportedStudyError, UnknownTaskError, NotAssessableError) as exc:
        return Outcome(JobState.UNSCREENABLE, str(exc))  # routed to a human list, neither flagged nor cleared
    except InvalidStudyError as exc:
        return Outcome(JobState.FAILED, str(exc))
    return Outcome(JobState.DONE, finding=finding)


class ScreeningStep:
    """Turns quiet studies into jobs, fails jobs that used up their attempts, then runs one job.

    Args:
        sessions: session factory of the migrated database.
        blobs: the blob store the instances are in.
        screen: screens one series' files.
        settings: quiet period, lease, attempts, SR destinations.
        shadow: the shadow screen of a task, when shadow mode may be on.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        screen: Screen,
        settings: Settings,
        shadow: ShadowScreens | None = None,
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.screen = screen
        self.settings = settings
        self.shadow = shadow
        self.name = worker_name()
        self._shadow_due: tuple[ClaimedJob, str] | None = None

    def run_once(self) -> bool:
        """``True`` when a job (or a shadow screening) ran."""
        shadowed = self.run_shadow()
        settings = self.settings
        complete_studies(self.sessions, settings.study_quiet_seconds)
        fail_exhausted_jobs(
            self.sessions,
            lease_seconds=settings.job_lease_seconds,
            max_attempts=settings.job_max_attempts,
            sr_destinations=settings.sr_destinations,
        )
        job = claim_job(
            self.sessions, self.name, lease_seconds=settings.job_lease_seconds, max_attempts=settings.job_max_attempts
        )
        if job is None:
            return shadowed
        try:
            outcome = run_job(self.screen, self.blobs, job, self._progress_of(job))
        except Exception as exc:  # a model or runtime failure: try again later, then give up
            log.error("job %s attempt %d failed: %s", job.id, job.attempts, type(exc).__name__)
            reason = f"{type(exc).__name__} on attempt {job.attempts}"
            if job.attempts < settings.job_max_attempts:
                defer_job(self.sessions, job, self.name, reason, delay_seconds=2.0**job.attempts)
                return True
            outcome = Outcome(JobState.FAILED, reason)
        status = finish_job(self.sessions, job, self.name, outcome, sr_destinations=settings.sr_destinations)
        log.info("job %s: %s%s", job.id, outcome.state, f"; study {job.study_id} {status}" if status else "")
        if outcome.finding is not None and self.shadow is not None:
            self._shadow_due = (job, outcome.finding.task)  # screened at the next turn, once triage has run
        return True

    def _progress_of(self, job: ClaimedJob) -> Progress:
        """Records a long analysis' progress on its job (and renews the lease), at most every
        ``PROGRESS_SECONDS``."""
        last = [0.0]

        def progress(fraction: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_SECONDS:
                last[0] = now
                report_progress(self.sessions, job, self.name, fraction)

        return progress

    def run_shadow(self) -> bool:
        """Screen the last finished job's series with its task's shadow model, if it has one, and
        store that finding apart. Any failure is logged (job id and error type only) and ignored.
        ``True`` when a shadow model screened."""
        due, self._shadow_due = self._shadow_due, None
        if due is None or self.shadow is None:
            return False
        job, task = due
        try:
            screen = self.shadow(task)
            if screen is None:
                return False
            files = {f.file_name: self.blobs.get(f.blob_key) for f in job.files}
            finding = screen(StudyFiles(files, job.headers))
            record_shadow(self.sessions, job.series.id, finding)
        except Exception as exc:  # the shadow never fails the job nor stops the worker
            log.warning("shadow screening of job %s failed: %s", job.id, type(exc).__name__)
            return False
        log.info("job %s: shadow %s %s:%s", job.id, task, finding.model_name, finding.model_version)
        return True
