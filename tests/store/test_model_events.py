"""The record of promotions, refusals and activations (``model_events``), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from prescreen.store.model_events import list_events, previously_active, record_event


def test_record_and_list_in_order(sessions: sessionmaker[Session]) -> None:
    before = datetime.now(UTC)
    figures = {"comparison": {"delta": {"accuracy": {"value": 0.1, "low": 0.05, "high": 0.15}}}, "passed": True}
    first = record_event(sessions, task="ecg-rhythm", action="promote", tag="m:2", previous_tag="m:1", actor="li")
    record_event(sessions, task="chest-xray", action="refuse", tag="c:9", actor="li", detail=figures)
    record_event(sessions, task="ecg-rhythm", action="activate", tag="m:1", previous_tag="m:2", actor="zhang")
    events = list_events(sessions)
    assert [(e.task, e.action, e.tag) for e in events] == [
        ("ecg-rhythm", "promote", "m:2"),
        ("chest-xray", "refuse", "c:9"),
        ("ecg-rhythm", "activate", "m:1"),
    ]
    assert events[0] == first
    assert events[1].detail == figures
    assert all(before - timedelta(seconds=1) <= e.at <= datetime.now(UTC) for e in events)
    assert all(e.at.tzinfo is not None for e in events)
    assert [e.actor for e in list_events(sessions, "ecg-rhythm")] == ["li", "zhang"]
    assert [e.tag for e in list_events(sessions, actions=["refuse"])] == ["c:9"]


def test_previously_active_counts_promotions_activations_and_what_they_replaced(
    sessions: sessionmaker[Session],
) -> None:
    assert previously_active(sessions, "ecg-rhythm") == set()
    record_event(sessions, task="ecg-rhythm", action="refuse", tag="m:bad", previous_tag="m:1", actor="li")
    record_event(sessions, task="ecg-rhythm", action="shadow_on", tag="m:shadow", previous_tag=None, actor="li")
    assert previously_active(sessions, "ecg-rhythm") == set()  # neither made anything active
    record_event(sessions, task="ecg-rhythm", action="promote", tag="m:2", previous_tag="m:1", actor="li")
    record_event(sessions, task="chest-xray", action="activate", tag="c:3", previous_tag=None, actor="li")
    assert previously_active(sessions, "ecg-rhythm") == {"m:1", "m:2"}
    assert previously_active(sessions, "chest-xray") == {"c:3"}


@pytest.mark.parametrize(("action", "actor"), [("", "li"), ("x" * 17, "li"), ("promote", "  ")])
def test_invalid_events_are_refused(sessions: sessionmaker[Session], action: str, actor: str) -> None:
    with pytest.raises(ValueError):
        record_event(sessions, task="ecg-rhythm", action=action, tag="m:1", actor=actor)
    assert list_events(sessions) == []
