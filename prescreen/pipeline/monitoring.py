"""The monitoring step: every ``PRESCREEN_MONITORING_INTERVAL_SECONDS`` it measures each model
version in service against the physicians' labels and the card's score distribution, stores the
alarms that newly hold (:func:`~prescreen.store.monitoring.raise_alarms`), and POSTs each alarm not
yet delivered to ``PRESCREEN_ESCALATION_WEBHOOK``.

The webhook receives ``{"event": "alarm", "id", "kind", "task", "model_version", "institution",
"message", "figures", "at"}``: figures only, nothing about a patient. A failed POST (an error, a
timeout or a non-2xx answer) is tried again with a doubling delay (1 min, 2 min, … at most 1 h
apart) up to :data:`ALARM_MAX_ATTEMPTS` attempts; a dead webhook is logged, never fatal. Delivery is
at least once: each attempt is counted before it is made, so of several replicas one sends it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.errors import ModelError
from prescreen.evaluation.monitoring import MonitoringPolicy
from prescreen.models.card import ModelCard
from prescreen.store.monitoring import (
    AlarmRow,
    claim_notification,
    mark_notified,
    model_versions,
    pending_alarms,
    raise_alarms,
)
from prescreen.store.queue import utcnow

log = logging.getLogger(__name__)

ALARM_MAX_ATTEMPTS = 20
"""Deliveries of one alarm tried before it is left undelivered (it stays stored and shown)."""
RETRY_BASE = timedelta(minutes=1)
RETRY_CAP = timedelta(hours=1)
WEBHOOK_TIMEOUT_SECONDS = 5.0

CardSource = Callable[[Sequence[tuple[str, str, str]]], Mapping[str, ModelCard]]
"""(task, model name, version) of the versions in service → the card of each version found."""


def retry_due(
    at: datetime, attempts: int, now: datetime, base: timedelta = RETRY_BASE, cap: timedelta = RETRY_CAP
) -> bool:
    """Whether an alarm raised ``at`` whose delivery was tried ``attempts`` times may be tried
    again: the first attempt at once, then after a delay that doubles from ``base`` up to ``cap``
    (the n-th retry ``Σ min(base·2^i, cap)`` for ``i < n`` after the alarm)."""
    wait = timedelta(0)
    for i in range(attempts):
        wait += min(base * (2**i), cap)
    return now >= at + wait


def webhook_payload(alarm: AlarmRow) -> dict[str, Any]:
    """What the webhook receives of an alarm (no patient data: the alarm holds figures only)."""
    figures = {k: v for k, v in alarm["detail"].items() if k != "resolved_at"}
    return {
        "event": "alarm",
        "id": alarm["id"],
        "kind": alarm["kind"],
        "task": alarm["task"],
        "model_version": alarm["model_version"],
        "institution": alarm["institution"],
        "message": alarm["message"],
        "figures": figures,
        "at": alarm["at"],
    }


class _Store(Protocol):
    def get(self, tag: str) -> Any: ...


class ModelCards:
    """The cards of the versions in service: the given ones (the active models'), else looked up
    in the model store by ``name:version`` and kept for ``ttl_seconds`` (a version the store does
    not hold is looked up again after that too).

    Args:
        known: cards at hand, by version (called on each lookup: the active models may change).
        store: the model store, or ``None`` to use the known cards only.
    """

    def __init__(
        self,
        known: Callable[[], Mapping[str, ModelCard]] | None = None,
        store: _Store | None = None,
        ttl_seconds: float = 600.0,
    ) -> None:
        self.known = known
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, tuple[float, ModelCard | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, versions: Sequence[tuple[str, str, str]]) -> dict[str, ModelCard]:
        cards = dict(self.known() if self.known else {})
        for _task, name, version in versions:
            if version in cards:
                continue
            card = self._lookup(f"{name}:{version}")
            if card is not None:
                cards[version] = card
        return cards

    def _lookup(self, tag: str) -> ModelCard | None:
        if self.store is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tag)
            if cached is not None and now - cached[0] < self.ttl_seconds:
                return cached[1]
        try:
            card: ModelCard | None = self.store.get(tag).card
        except ModelError:
            card = None
        with self._lock:
            self._cache[tag] = (now, card)
        return card

    @classmethod
    def of_engine(cls, engine: object | None) -> ModelCards:
        """The cards of a screening engine's active models, and its model store for the others."""
        models = getattr(engine, "models", None)

        def known() -> dict[str, ModelCard]:
            found = {}
            for model in dict(models or {}).values():
                card = getattr(model, "card", None)
                if isinstance(card, ModelCard):
                    found[card.version] = card
            return found

        return cls(known if models is not None else None, getattr(engine, "store", None))


class MonitoringStep:
    """Raises monitoring alarms and sends them to the webhook; run by its own loop every
    ``PRESCREEN_MONITORING_INTERVAL_SECONDS``.

    Args:
        sessions: session factory of the migrated database.
        cards: the cards of the versions in service.
        policy: window, thresholds and target.
        webhook: URL alarms are POSTed to, or ``None``.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        cards: CardSource,
        policy: MonitoringPolicy,
        webhook: str | None = None,
        *,
        max_attempts: int = ALARM_MAX_ATTEMPTS,
    ) -> None:
        self.sessions = sessions
        self.cards = cards
        self.policy = policy
        self.webhook = webhook
        self.max_attempts = max_attempts

    @classmethod
    def of(cls, sessions: sessionmaker[Session], settings: Settings, screen: object | None = None) -> MonitoringStep:
        """The step of a service process; the cards come from the engine whose bound ``screen``
        method is given (none otherwise)."""
        engine = getattr(screen, "__self__", None)
        return cls(
            sessions,
            ModelCards.of_engine(engine),
            MonitoringPolicy.from_settings(settings),
            settings.escalation_webhook,
        )

    def run_once(self) -> bool:
        """Always ``False``: one check per round, and the loop's pause is the monitoring interval."""
        self.check()
        return False

    def check(self, now: datetime | None = None) -> list[AlarmRow]:
        """Raise the alarms that newly hold, then deliver the pending ones; returns those raised."""
        with self.sessions() as session:
            versions = model_versions(session)
        raised = raise_alarms(self.sessions, self.cards(versions), self.policy, now=now)
        for alarm in raised:
            log.warning("monitoring alarm %s: %s", alarm["kind"], alarm["message"])
        self.notify_pending(now)
        return raised

    def notify_pending(self, now: datetime | None = None) -> int:
        """POST each undelivered alarm whose retry is due; returns how many the webhook took."""
        if not self.webhook:
            return 0
        now = now or utcnow()
        with self.sessions() as session:
            pending = pending_alarms(session, self.max_attempts)
        sent = 0
        for alarm in pending:
            at = datetime.fromisoformat(alarm["at"])
            if not retry_due(at, alarm["attempts"], now):
                continue
            if not claim_notification(self.sessions, alarm["id"], alarm["attempts"]):
                continue  # another process is sending it
            if self.post(alarm):
                mark_notified(self.sessions, alarm["id"])
                sent += 1
        return sent

    def post(self, alarm: AlarmRow) -> bool:
        """POST one alarm; ``True`` when the webhook answered 2xx."""
        assert self.webhook is not None
        try:
            response = httpx.post(self.webhook, json=webhook_payload(alarm), timeout=WEBHOOK_TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            log.warning("alarm webhook failed: %s", type(exc).__name__)
            return False
        if not response.is_success:
            log.warning("alarm webhook answered %d", response.status_code)
            return False
        return True
