"""What a service process runs besides HTTP: the store, the screening and triage loops, the outbox
and the DICOM listener. Started once per process by the BentoML service (or by tests)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings, get_settings
from prescreen.integration.listener import start_listener
from prescreen.pipeline.audit import AuditStep
from prescreen.pipeline.backups import BackupStep
from prescreen.pipeline.loop import Step, StepLoop
from prescreen.pipeline.monitoring import MonitoringStep
from prescreen.pipeline.outbox import OutboxStep
from prescreen.pipeline.replication import ReplicationStep, Replicator, start_replication
from prescreen.pipeline.screening import Screen, ScreeningStep, ShadowScreens
from prescreen.pipeline.triage import TriageStep
from prescreen.pipeline.uplinks import Uplinks
from prescreen.security.audit import Actor, AuditEntry, AuditEvent
from prescreen.security.keyring import keyring_for
from prescreen.security.keys import audit_signer
from prescreen.security.scratch import use_scratch
from prescreen.store.audit import record_now, sign_checkpoint
from prescreen.store.blobs import raw_blob_store
from prescreen.store.db import database_url, make_engine, migrate, session_factory
from prescreen.store.group_commit import GroupCommit
from prescreen.store.ingest import Ingestor
from prescreen.store.queue import release_dead_locks
from prescreen.store.sealed import SealedBlobStore
from prescreen.triage.priority import SlaTargets
from prescreen.triage.rules import RuleSet, load_default_rules, load_rules

log = logging.getLogger(__name__)
BACKUP_POLL_SECONDS = 300.0
REPLICATION_POLL_SECONDS = 5.0
"""How often the backup schedule looks whether a set is due."""


def open_store(settings: Settings) -> Ingestor:
    """Migrate the database to the newest schema and open it with the blob store (the home's folder or
    the object store of ``PRESCREEN_BLOB_URL``; sealed at rest, SM4-GCM under the keyring of ``settings``)."""
    url = database_url(settings)
    migrate(url)
    blobs = SealedBlobStore(raw_blob_store(settings, capture=True), keyring_for(settings))
    sessions = session_factory(make_engine(url))
    return Ingestor(sessions, blobs, GroupCommit(sessions, blobs) if settings.group_commit else None)


def load_routing_rules(settings: Settings) -> RuleSet:
    """The routing rules of ``PRESCREEN_RULES_PATH``, else the shipped ones (raises ``RulesError``)."""
    return load_rules(settings.rules_path) if settings.rules_path else load_default_rules()


def sla_targets(settings: Settings) -> SlaTargets:
    """The report targets per priority from the settings."""
    return SlaTargets(
        stat=timedelta(minutes=settings.sla_stat_minutes),
        urgent=timedelta(minutes=settings.sla_urgent_minutes),
        routine=timedelta(minutes=settings.sla_routine_minutes),
    )


@dataclass
class Runtime:
    """The running background parts of one process."""

    ingestor: Ingestor
    loops: list[StepLoop] = field(default_factory=list)
    listener: ThreadedAssociationServer | None = None
    tls_listener: ThreadedAssociationServer | None = None
    settings: Settings | None = None
    replicator: Replicator | None = None
    uplinks: Uplinks | None = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.ingestor.sessions

    def stop(self) -> None:
        for server in (self.listener, self.tls_listener):
            if server is not None:
                server.shutdown()
        for loop in self.loops:
            loop.stop()
        if self.uplinks is not None:
            self.uplinks.stop()  # the edge's health checks
        try:
            record_now(self.sessions, AuditEntry(AuditEvent.SERVICE_STOP, Actor.system()))
            sign_checkpoint(self.sessions, audit_signer(self.settings or get_settings()))
        except Exception:  # the database may be gone at shutdown; never hide the stop itself
            log.exception("could not record the service stop in the audit trail")
        if self.replicator is not None:
            self.replicator.stop()  # after the last record, which it ships before exiting


def _shadow_of(screen: Screen | None) -> ShadowScreens | None:
    """The shadow screens of the engine whose bound ``screen`` method this is, if it has them."""
    found = getattr(getattr(screen, "__self__", None), "shadow_screen", None)
    return cast(ShadowScreens, found) if callable(found) else None


def start_runtime(
    settings: Settings, screen: Screen | None, *, listen: bool = True, shadow: ShadowScreens | None = None
) -> Runtime:
    """Open the store and start ``PRESCREEN_WORKER_THREADS`` screening loops (triage, then screening;
    only when ``screen`` is given, with the monitoring loop), the outbox loop and the DICOM listener.
    ``shadow`` screens live studies with a task's shadow model (default: that of the engine whose
    ``screen`` is given).

    Raises:
        RulesError: an invalid routing-rules file (the service must not start with it).
    """
    rules = load_routing_rules(settings) if screen is not None else None
    if listen:  # a serving process: its uploads and decoded records stay in memory
        use_scratch(settings)
    runtime = Runtime(open_store(settings), settings=settings)
    released = release_dead_locks(runtime.sessions)
    if released:
        log.info("took back %d jobs or deliveries of a process that died", released)
    blobs = runtime.ingestor.blobs
    shadow = shadow or _shadow_of(screen)
    if screen is not None and rules is not None:
        triage = TriageStep(runtime.sessions, rules, sla_targets(settings), settings.escalation_webhook)
        for index in range(settings.worker_threads):
            steps: list[Step] = [triage, ScreeningStep(runtime.sessions, blobs, screen, settings, shadow)]
            runtime.loops.append(StepLoop(f"screening-{index}", steps, settings.worker_poll_seconds))
        monitoring = MonitoringStep.of(runtime.sessions, settings, screen)
        runtime.loops.append(StepLoop("monitoring", [monitoring], settings.monitoring_interval_seconds))
    outbox = OutboxStep(runtime.sessions, blobs, settings)
    runtime.uplinks = outbox.uplinks
    runtime.loops.append(StepLoop("outbox", [outbox], settings.worker_poll_seconds))
    runtime.loops.append(StepLoop("audit", [AuditStep(runtime.sessions, settings)], settings.audit_checkpoint_seconds))
    if settings.backup_dir is not None:
        runtime.loops.append(StepLoop("backup", [BackupStep(runtime.sessions, settings)], BACKUP_POLL_SECONDS))
    runtime.replicator = start_replication(settings)
    if runtime.replicator is not None:
        runtime.loops.append(StepLoop("replication", [ReplicationStep(runtime.replicator)], REPLICATION_POLL_SECONDS))
    detail = {
        "listener": listen,
        "screening": screen is not None,
        "anonymous_permissions": list(settings.anonymous_permissions),
        "mfa": settings.mfa,
    }
    record_now(runtime.sessions, AuditEntry(AuditEvent.SERVICE_START, Actor.system(), detail=detail))
    if settings.anonymous_permissions:
        log.warning(
            "PRESCREEN_ANONYMOUS_PERMISSIONS=%s: callers without credentials may do this (a trusted lab network only)",
            ",".join(settings.anonymous_permissions),
        )
    for loop in runtime.loops:
        loop.start()
    if listen:
        runtime.listener = start_listener(runtime.ingestor, settings)
        runtime.tls_listener = start_listener(runtime.ingestor, settings, tls=True)
    return runtime
