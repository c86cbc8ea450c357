"""What a service process runs besides HTTP: the store, the screening workers, the DICOM
listener and the outbox. Started once per process by the BentoML service (or by tests)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.integration.listener import start_listener
from prescreen.integration.outbox import Outbox
from prescreen.serving.worker import Screen, ScreeningWorker, Triage
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import database_url, make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.queue import release_dead_locks
from prescreen.triage.rules import RuleSet, load_default_rules, load_rules

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> Ingestor:
    """Migrate the database to the newest schema and open it with the blob store."""
    url = database_url(settings)
    migrate(url)
    return Ingestor(session_factory(make_engine(url)), FileBlobStore(settings.home / "blobs"))


@dataclass
class Runtime:
    """The running background parts of one process."""

    ingestor: Ingestor
    workers: list[ScreeningWorker] = field(default_factory=list)
    outbox: Outbox | None = None
    listener: ThreadedAssociationServer | None = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.ingestor.sessions

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.shutdown()
        for worker in self.workers:
            worker.stop()
        if self.outbox is not None:
            self.outbox.stop()


def load_routing_rules(settings: Settings) -> RuleSet:
    """The routing rules of ``PRESCREEN_RULES_PATH``, else the shipped ones (raises ``RulesError``)."""
    return load_rules(settings.rules_path) if settings.rules_path else load_default_rules()


def start_runtime(settings: Settings, screen: Screen | None, *, listen: bool = True) -> Runtime:
    """Open the store and start the workers (when ``screen`` is given), the outbox and the listener.

    Raises:
        RulesError: an invalid routing-rules file (the service must not start with it).
    """
    triage = None
    if screen is not None:
        from prescreen.serving.worklists import sla_targets

        triage = Triage(load_routing_rules(settings), sla_targets(settings), settings.escalation_webhook)
    runtime = Runtime(open_store(settings))
    released = release_dead_locks(runtime.sessions)
    if released:
        log.info("took back %d jobs or deliveries of a process that died", released)
    if screen is not None:
        for _ in range(settings.worker_threads):
            worker = ScreeningWorker(runtime.sessions, runtime.ingestor.blobs, screen, settings, triage)
            worker.start()
            runtime.workers.append(worker)
    runtime.outbox = Outbox(runtime.sessions, runtime.ingestor.blobs, settings)
    runtime.outbox.start()
    if listen:
        runtime.listener = start_listener(runtime.ingestor, settings)
    return runtime
