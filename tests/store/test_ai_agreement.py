"""``ai_agreement_stats``: the physicians' agreement with the AI flag on final reports, per task and
flag, on a real database (SQLite, and PostgreSQL where available: the ``sessions`` fixture).

Items are written directly with the fields the reading workflow sets: finalising sets
``open=False``, ``finalized_at`` and ``ai_agrees``; reopening for an amendment sets ``open=True`` and
``finalized_at=None`` but leaves the previous ``ai_agrees``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from prescreen.store.schema import Study
from prescreen.store.schema_triage import WorklistItem
from prescreen.store.sla import ai_agreement_stats

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def add_item(
    session: Session,
    *,
    task: str | None,
    flagged: bool | None,
    ai_agrees: bool | None,
    final: bool = True,
    worklist: str = "general",
) -> None:
    study = Study(study_uid=f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**20}")
    session.add(study)
    session.flush()
    session.add(
        WorklistItem(
            study_id=study.id,
            worklist=worklist,
            priority="routine",
            rule="test",
            task=task,
            label=None,
            flagged=flagged,
            score=None if task is None else (0.9 if flagged else 0.1),
            received_at=T0,
            due_at=T0 + timedelta(hours=4),
            open=not final,
            state="final" if final else "claimed",
            ai_agrees=ai_agrees,
            finalized_at=T0 + timedelta(hours=1) if final else None,
        )
    )


def stats(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as session:
        return ai_agreement_stats(session)


def test_empty_database_has_no_groups(sessions: sessionmaker[Session]) -> None:
    assert stats(sessions) == []


def test_agreement_per_task_and_flag(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        for agrees in (True, True, False):
            add_item(session, task="ecg-rhythm", flagged=True, ai_agrees=agrees)
        add_item(session, task="ecg-rhythm", flagged=False, ai_agrees=True)
        add_item(session, task="chest-xray", flagged=True, ai_agrees=False)
        add_item(session, task="chest-xray", flagged=True, ai_agrees=False, worklist="chest")
        for agrees in (True, False, False, False):
            add_item(session, task="chest-xray", flagged=False, ai_agrees=agrees)
    assert stats(sessions) == [
        {"task": "chest-xray", "flagged": False, "n": 4, "agree": 0.25},
        {"task": "chest-xray", "flagged": True, "n": 2, "agree": 0.0},
        {"task": "ecg-rhythm", "flagged": False, "n": 1, "agree": 1.0},
        {"task": "ecg-rhythm", "flagged": True, "n": 3, "agree": 0.667},
    ]


def test_open_items_and_items_without_an_opinion_are_left_out(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_item(session, task="breast-us", flagged=True, ai_agrees=True)  # the one that counts
        add_item(session, task="breast-us", flagged=True, ai_agrees=None)  # final, no opinion given
        add_item(session, task="breast-us", flagged=True, ai_agrees=None, final=False)  # still being read
        add_item(session, task="breast-us", flagged=True, ai_agrees=False, final=False)  # reopened to amend
        add_item(session, task="breast-us", flagged=False, ai_agrees=False, final=False)  # a group only open items have
        add_item(session, task=None, flagged=None, ai_agrees=True)  # unscreenable: no AI flag to agree with
    assert stats(sessions) == [{"task": "breast-us", "flagged": True, "n": 1, "agree": 1.0}]


def test_agreement_is_rounded_to_three_places(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        for k in range(7):
            add_item(session, task="ecg-rhythm", flagged=True, ai_agrees=k < 2)
    (row,) = stats(sessions)
    assert row["n"] == 7
    assert row["agree"] == round(2 / 7, 3)


def test_flagged_is_a_plain_bool_and_groups_are_sorted(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_item(session, task="ecg-rhythm", flagged=True, ai_agrees=True)
        add_item(session, task="breast-us", flagged=True, ai_agrees=True)
        add_item(session, task="ecg-rhythm", flagged=False, ai_agrees=False)
        add_item(session, task="breast-us", flagged=False, ai_agrees=True)
    rows = stats(sessions)
    assert [(r["task"], r["flagged"]) for r in rows] == [
        ("breast-us", False),
        ("breast-us", True),
        ("ecg-rhythm", False),
        ("ecg-rhythm", True),
    ]
    assert all(type(r["flagged"]) is bool for r in rows)
