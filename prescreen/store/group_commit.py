"""Group commit of received instances: what arrives on all associations (and in one STOW-RS request)
while the previous group is being made durable is made durable together.

Each sender's thread hands its instance to :meth:`GroupCommit.store` and waits. One committer
thread takes everything waiting, writes the blobs, makes them durable together
(:func:`prescreen.store.blobs.sync_file_system`: the files, then each folder once), then
records all instances in one transaction (one commit, one fsync of the database's log), and only then
answers the waiting senders. So each instance is still acknowledged only once it is durable, but the
cost of durability is shared: a single sender waits for its own instance alone (no added delay), and
many senders share one commit (and the folders their blobs are in, one fsync each).

When the blob store fails (a full disk, an object store that is down), every sender of the group
gets that error. When recording fails (a unique key hit by another replica creating the same study,
a series that belongs to another study, a database error), the group's transaction is rolled back and
each of its instances is stored again on its own (:func:`prescreen.store.ingest.store_instance`), so
every sender gets its own answer and one bad instance never refuses another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from prescreen.security.audit import Actor
from prescreen.store.blobs import BlobStore
from prescreen.store.ingest import InstanceMeta, Received, record_in, store_instance

log = logging.getLogger(__name__)
MAX_GROUP = 64
"""Instances made durable together at most (bounds one transaction and the memory held)."""
IDLE_SECONDS = 5.0
"""The committer thread ends after this long without work (the next instance starts another)."""


@dataclass
class _Waiting:
    data: bytes
    meta: InstanceMeta
    actor: Actor | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Received | None = None
    error: BaseException | None = None


@dataclass
class GroupStats:
    """How the groups went (for benchmarks and tests)."""

    groups: int = 0
    instances: int = 0
    fallbacks: int = 0
    largest: int = 0


class GroupCommit:
    """Make instances durable in groups (see the module docstring).

    Args:
        sessions: session factory of the migrated database.
        blobs: the blob store (its ``put(durable=False)`` and ``sync`` are used).
        max_group: most instances per group.
    """

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, max_group: int = MAX_GROUP) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.max_group = max_group
        self.stats = GroupStats()
        self._waiting: list[_Waiting] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def store(self, data: bytes, meta: InstanceMeta, actor: Actor | None = None) -> Received:
        """Store one instance; returns once it is durable (raises what storing it alone would raise)."""
        (outcome,) = self.store_many([(data, meta, actor)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def store_many(self, items: Sequence[tuple[bytes, InstanceMeta, Actor | None]]) -> list[Received | BaseException]:
        """Store several instances (e.g. the parts of one STOW-RS request) in the same group(s);
        returns, in order, each one's :class:`Received` or the error that refused it."""
        waiting = [_Waiting(data, meta, actor) for data, meta, actor in items]
        with self._cond:
            self._start()
            self._waiting.extend(waiting)
            self._cond.notify()
        for item in waiting:
            item.done.wait()
        return [item.error if item.error is not None else _received(item) for item in waiting]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._waiting:
                    self._cond.wait(timeout=IDLE_SECONDS)
                if not self._waiting:  # idle: end, so that an unused store is not kept alive by its thread
                    self._thread = None
                    return
                group = self._waiting[: self.max_group]
                del self._waiting[: self.max_group]
            try:
                self._commit(group)
            except BaseException as exc:  # never leave a sender waiting
                for item in group:
                    if item.result is None and item.error is None:
                        item.error = exc
            finally:
                for item in group:
                    item.done.set()

    def _commit(self, group: list[_Waiting]) -> None:
        self.stats.groups += 1
        self.stats.instances += len(group)
        self.stats.largest = max(self.stats.largest, len(group))
        try:  # the blob store failing (a full disk, an object store down) fails every sender alike
            keys = [self.blobs.put(item.data, durable=False) for item in group]
            self.blobs.sync()
        except Exception as exc:
            for item in group:
                item.error = exc
            return
        try:
            now = datetime.now(UTC)
            with self.sessions.begin() as session:
                results = [
                    record_in(session, key, len(item.data), item.meta, item.actor, now)
                    for key, item in zip(keys, group, strict=True)
                ]
        except Exception as exc:
            log.info("a group of %d instances is stored one by one (%s)", len(group), type(exc).__name__)
            self.stats.fallbacks += 1
            for item in group:
                try:
                    item.result = store_instance(self.sessions, self.blobs, item.data, item.meta, item.actor)
                except Exception as one:
                    item.error = one
            return
        for item, result in zip(group, results, strict=True):
            item.result = result


def _received(item: _Waiting) -> Received:
    if item.result is None:  # not reached: the committer sets a result or an error
        raise RuntimeError("an instance left the group commit without an outcome")
    return item.result
