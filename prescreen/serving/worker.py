"""The screening worker: a thread that turns complete studies into jobs and runs them.

Each service process runs ``PRESCREEN_WORKER_THREADS`` of them. The queue lives in the
database (:mod:`prescreen.store.queue`), so a killed process loses nothing: its unfinished jobs
are taken again once their lease has expired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import httpx
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.errors import InvalidStudyError, UnknownTaskError, UnsupportedStudyError
from prescreen.models.onnx_model import ScreenResult
from prescreen.store.blobs import BlobNotFoundError, BlobStore
from prescreen.store.queue import (
    DONE,
    FAILED,
    UNSCREENABLE,
    ClaimedJob,
    Outcome,
    claim_job,
    complete_studies,
    defer_job,
    fail_exhausted_jobs,
    finish_job,
    worker_name,
)
from prescreen.store.sla import escalate
from prescreen.store.worklist import triage_pending
from prescreen.triage.priority import SlaTargets
from prescreen.triage.rules import RuleSet

log = logging.getLogger(__name__)


class Triage:
    """Routes screened studies into worklists and records SLA escalations (every 10 s), POSTing
    new escalations to ``PRESCREEN_ESCALATION_WEBHOOK`` when set.

    Args:
        rules: the validated routing rules.
        targets: the SLA targets per priority.
        webhook: URL escalation events go to, or ``None``.
    """

    ESCALATION_EVERY_SECONDS = 10.0

    def __init__(self, rules: RuleSet, targets: SlaTargets, webhook: str | None = None) -> None:
        self.rules = rules
        self.targets = targets
        self.webhook = webhook
        self._last_escalation = 0.0

    def step(self, sessions: sessionmaker[Session]) -> None:
        triage_pending(sessions, self.rules, self.targets)
        if time.monotonic() - self._last_escalation >= self.ESCALATION_EVERY_SECONDS:
            self._last_escalation = time.monotonic()
            for event in escalate(sessions, self.targets):
                log.info("item %s reached %d%% of its %s target", event["item_id"], event["level"], event["priority"])
                self._notify(event)

    def _notify(self, event: dict[str, object]) -> None:
        if not self.webhook:
            return
        try:
            httpx.post(self.webhook, json={"event": "escalation", **event}, timeout=5)
        except httpx.HTTPError as exc:
            log.warning("escalation webhook failed: %s", type(exc).__name__)

Screen = Callable[[Mapping[str, bytes]], ScreenResult]


def run_job(screen: Screen, blobs: BlobStore, job: ClaimedJob) -> Outcome:
    """Screen the files of a job's series. Raises only on unexpected (maybe transient) errors."""
    try:
        files = {f.name: blobs.get(f.blob_key) for f in job.files}
    except BlobNotFoundError as exc:
        return Outcome(FAILED, f"a stored file is missing: {exc}")
    if not files:
        return Outcome(UNSCREENABLE, "the series has no instance")
    try:
        result = screen(files)
    except (UnsupportedStudyError, UnknownTaskError) as exc:
        return Outcome(UNSCREENABLE, str(exc))
    except InvalidStudyError as exc:
        return Outcome(FAILED, str(exc))
    return Outcome(
        DONE,
        result={
            "task": result.task,
            "model_name": result.model_name,
            "model_version": result.model_version,
            "flagged": result.flagged,
            "label": result.label,
            "score": float(result.score),
            "threshold": float(result.threshold),
            "probabilities": {k: float(v) for k, v in result.probabilities.items()},
        },
    )


class ScreeningWorker:
    """Polls the queue until stopped.

    Args:
        sessions: session factory of the migrated database.
        blobs: the blob store the instances are in.
        screen: screens one series' files (``ScreeningEngine.screen``).
        settings: quiet period, lease, attempts, SR destinations.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        screen: Screen,
        settings: Settings,
        triage: Triage | None = None,
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.screen = screen
        self.settings = settings
        self.triage = triage
        self.name = worker_name()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """Complete quiet studies, route screened ones to worklists, then run one job; ``True``
        when a job ran."""
        complete_studies(self.sessions, self.settings.study_quiet_seconds)
        if self.triage is not None:
            self.triage.step(self.sessions)
        fail_exhausted_jobs(
            self.sessions,
            lease_seconds=self.settings.job_lease_seconds,
            max_attempts=self.settings.job_max_attempts,
            sr_destinations=self.settings.sr_destinations,
        )
        job = claim_job(
            self.sessions,
            self.name,
            lease_seconds=self.settings.job_lease_seconds,
            max_attempts=self.settings.job_max_attempts,
        )
        if job is None:
            return False
        try:
            outcome = run_job(self.screen, self.blobs, job)
        except Exception as exc:  # a model or runtime failure: try again later, then give up
            log.error("job %s attempt %d failed: %s", job.id, job.attempts, type(exc).__name__)
            reason = f"{type(exc).__name__} on attempt {job.attempts}"
            if job.attempts < self.settings.job_max_attempts:
                defer_job(self.sessions, job, self.name, reason, delay_seconds=2.0**job.attempts)
                return True
            outcome = Outcome(FAILED, reason)
        status = finish_job(self.sessions, job, self.name, outcome, sr_destinations=self.settings.sr_destinations)
        log.info("job %s: %s%s", job.id, outcome.state, f"; study {job.study_id} {status}" if status else "")
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:  # the database may be briefly unavailable; keep the thread alive
                log.error("screening worker step failed: %s", type(exc).__name__)
                busy = False
            if not busy:
                self._stop.wait(self.settings.worker_poll_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"screening-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
