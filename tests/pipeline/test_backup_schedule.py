"""The backup schedule: which set is due (a table), which old chains go, and the step writing a full
set then nothing until an incremental is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prescreen.config import Settings
from prescreen.pipeline.backups import BackupStep, due, expired
from prescreen.pipeline.runtime import open_store
from prescreen.store.backup import BackupSet, list_sets

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
WEEK, DAY = timedelta(days=7), timedelta(hours=24)


def made(kind: str, ago: timedelta) -> BackupSet:
    created = (NOW - ago).isoformat()
    return BackupSet(f"{created}-{kind}", Path("."), kind, created, None, {}, {})


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ([], "full"),
        ([made("full", timedelta(hours=1))], None),
        ([made("full", timedelta(hours=25))], "incremental"),
        ([made("full", timedelta(days=3)), made("incremental", timedelta(hours=2))], None),
        ([made("full", timedelta(days=3)), made("incremental", timedelta(hours=24))], "incremental"),
        ([made("full", timedelta(days=7)), made("incremental", timedelta(hours=1))], "full"),
        ([made("incremental", timedelta(hours=1))], "full"),  # an incremental without a full set: full
    ],
)
def test_which_backup_is_due(sets: list[BackupSet], expected: str | None) -> None:
    assert due(sets, NOW, WEEK, DAY) == expected


def test_expired_chains_are_those_older_than_the_newest_kept_full_sets() -> None:
    sets = [
        made("full", timedelta(days=21)),
        made("incremental", timedelta(days=20)),
        made("full", timedelta(days=14)),
        made("incremental", timedelta(days=13)),
        made("full", timedelta(days=7)),
    ]
    assert [s.name for s in expired(sets, 2)] == [s.name for s in sets[:2]]
    assert expired(sets, 3) == [] and expired(sets, 5) == []


def test_the_step_writes_a_full_set_then_waits(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", backup_dir=tmp_path / "backups")
    store = open_store(settings)
    step = BackupStep(store.sessions, settings)
    assert step.run_once() is True
    assert step.run_once() is False  # nothing due for a day
    assert [s.kind for s in list_sets(tmp_path / "backups")] == ["full"]
    assert BackupStep(store.sessions, Settings(home=tmp_path / "home")).run_once() is False  # no folder, no schedule
