"""The triage step: studies whose screening ended become worklist items by the routing rules, and
open items that reach 75 % or 100 % of their target are escalated (stored, logged and POSTed to
``PRESCREEN_ESCALATION_WEBHOOK``).

The decisions are the pure functions of :mod:`prescreen.triage`; the rows are read and written
through :mod:`prescreen.store.worklist` and :mod:`prescreen.store.sla`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import httpx
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prescreen.domain import Priority
from prescreen.store.queue import as_utc, utcnow
from prescreen.store.sla import Escalated, record_escalations
from prescreen.store.worklist import add_item, find_item, lock_routable_study, series_facts, studies_to_triage
from prescreen.triage.priority import SlaTargets, due_at, rank
from prescreen.triage.rules import Routing, RuleSet, SeriesFacts, route_study

log = logging.getLogger(__name__)


def shown_result(rules: RuleSet, facts: list[SeriesFacts], worklist: str) -> SeriesFacts | None:
    """The AI result an item of ``worklist`` shows (and is sorted by): the highest-scoring series
    that the rules route to that worklist."""
    mine = [f for f in facts or [SeriesFacts()] if (r := rules.route(f)) is not None and r.worklist == worklist]
    return max((f for f in mine if f.score is not None), key=lambda f: f.score or 0.0, default=None)


def triage_study(session: Session, study_id: str, rules: RuleSet, targets: SlaTargets) -> list[Routing]:
    """Route one study into its worklists (an item per worklist; a re-screened study updates its
    open items, raising their priority when the new routing is more urgent, never lowering it)."""
    study = lock_routable_study(session, study_id)
    if study is None:
        return []
    facts = series_facts(session, study)
    routings = route_study(rules, facts)
    received = as_utc(study.received_at)
    for routing in routings:
        top = shown_result(rules, facts, routing.worklist)
        due = due_at(received, routing.priority, targets)
        item = find_item(session, study_id, routing.worklist)
        if item is None:
            item = add_item(session, study_id, routing, received, due)
        elif item.open and rank(routing.priority) < rank(Priority(item.priority)):  # re-screened: more urgent
            item.priority, item.rule, item.due_at = routing.priority, routing.rule, min(as_utc(item.due_at), due)
        if item.open is not False:  # a final report keeps the result it was read with
            item.task = top.task if top else None
            item.label = top.label if top else None
            item.flagged = top.flagged if top else None
            item.score = top.score if top else None
            item.revision = (item.revision or 0) + 1
    study.triaged_at = utcnow()
    return routings


def triage_pending(sessions: sessionmaker[Session], rules: RuleSet, targets: SlaTargets, limit: int = 50) -> int:
    """Route studies that finished screening since they were last routed; returns how many."""
    with sessions() as session:
        pending = studies_to_triage(session, limit)
    for study_id in pending:
        try:
            with sessions.begin() as session:
                triage_study(session, study_id, rules, targets)
        except IntegrityError:
            continue  # another worker routed it at the same moment
    return len(pending)


class TriageStep:
    """Routes screened studies into worklists; every ``ESCALATION_EVERY_SECONDS`` records new
    escalations and POSTs each to the webhook.

    Args:
        sessions: session factory of the migrated database.
        rules: the validated routing rules.
        targets: the SLA targets per priority.
        webhook: URL escalation events go to, or ``None``.
    """

    ESCALATION_EVERY_SECONDS = 10.0

    def __init__(
        self, sessions: sessionmaker[Session], rules: RuleSet, targets: SlaTargets, webhook: str | None = None
    ) -> None:
        self.sessions = sessions
        self.rules = rules
        self.targets = targets
        self.webhook = webhook
        self._last_escalation = 0.0

    def run_once(self) -> bool:
        """Always ``False``: routing is cheap work beside screening, whose jobs set the loop's pace
        (a study that cannot be routed must not keep the loop from sleeping)."""
        triage_pending(self.sessions, self.rules, self.targets)
        if time.monotonic() - self._last_escalation >= self.ESCALATION_EVERY_SECONDS:
            self._last_escalation = time.monotonic()
            for event in record_escalations(self.sessions, self.targets):
                log.info("item %s reached %d%% of its %s target", event.item_id, event.level, event.priority)
                self.notify(event)
        return False

    def notify(self, event: Escalated) -> None:
        """POST one escalation to the webhook; a dead webhook is logged, never fatal."""
        if not self.webhook:
            return
        try:
            httpx.post(self.webhook, json={"event": "escalation", **asdict(event)}, timeout=5)
        except httpx.HTTPError as exc:
            log.warning("escalation webhook failed: %s", type(exc).__name__)
