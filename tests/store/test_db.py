"""Migrations and the schema on a real SQLite database (WAL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from prescreen.config import get_settings
from prescreen.store.db import database_url, make_engine, migrate, session_factory
from prescreen.store.schema import Instance, Job, Result, Series, Study


@pytest.fixture
def engine_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'test.db'}"
    migrate(url)
    return url


def test_default_url_is_sqlite_under_home(isolated_home: Path) -> None:
    assert database_url(get_settings()) == f"sqlite:///{isolated_home / 'prescreen.db'}"


def test_migration_creates_every_table_and_is_repeatable(engine_url: str) -> None:
    migrate(engine_url)  # a second run is a no-op
    engine = make_engine(engine_url)
    tables = set(inspect(engine).get_table_names())
    assert tables == {
        "alarms",
        "alembic_version",
        "audit_checkpoints",
        "audit_events",
        "audit_head",
        "auth_sessions",
        "clients",
        "deliveries",
        "escalations",
        "instances",
        "item_events",
        "jobs",
        "keyring_documents",
        "model_events",
        "reports",
        "results",
        "series",
        "shadow_results",
        "signatures",
        "sign_in_failures",
        "signing_keys",
        "studies",
        "users",
        "worklist_items",
    }  # every table of the schema at revision 0008, and nothing else
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0009"


def test_study_round_trip_and_uniqueness(engine_url: str) -> None:
    sessions = session_factory(make_engine(engine_url))
    with sessions.begin() as s:
        study = Study(study_uid="1.2.3", institution="clinic-7")
        series = Series(series_uid="1.2.3.1", modality="US", study=study)
        s.add(Instance(sop_instance_uid="1.2.3.1.1", blob_key="a" * 64, size_bytes=10, series=series))
    with sessions() as s:
        got = s.scalars(select(Study).where(Study.study_uid == "1.2.3")).one()
        assert got.status == "received" and got.series[0].instances[0].size_bytes == 10
    with pytest.raises(IntegrityError), sessions.begin() as s:
        series_id = s.scalars(select(Series.id)).one()
        s.add(Instance(sop_instance_uid="1.2.3.1.1", blob_key="b" * 64, size_bytes=1, series_id=series_id))


def test_one_result_per_job(engine_url: str) -> None:
    sessions = session_factory(make_engine(engine_url))
    with sessions.begin() as s:
        series = Series(series_uid="9.1", study=Study(study_uid="9"))
        s.add(series)
        s.flush()
        job = Job(series_id=series.id)
        s.add(job)
        s.flush()
        fields = dict(
            series_id=series.id,
            task="ecg-rhythm",
            model_name="m",
            model_version="1",
            flagged=True,
            label="af",
            score=0.9,
            threshold=0.5,
            probabilities={"af": 0.9},
        )
        s.add(Result(job_id=job.id, **fields))
        s.flush()
        job_id, series_id = job.id, series.id
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.add(Result(job_id=job_id, **{**fields, "series_id": series_id}))
