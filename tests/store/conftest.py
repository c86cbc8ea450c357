"""Database fixtures of the store tests: every test that asks for ``database_url`` runs on
SQLite and on PostgreSQL.

PostgreSQL: one throwaway cluster for the whole test session (``initdb`` + ``pg_ctl`` on a
free port, ``fsync=off``), or the server named by ``PRESCREEN_TEST_POSTGRES_URL``; each test
gets its own fresh database, dropped afterwards. Without the PostgreSQL binaries the
``postgresql`` tests are skipped, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url
from sqlalchemy.orm import Session, sessionmaker

from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from tests.peers import POSTGRES_HINT, require_peer
from tests.pg_cluster import ClusterUnavailableError, PgCluster

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``) of the session's server."""
    external = os.environ.get("PRESCREEN_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    try:
        cluster = PgCluster()
    except ClusterUnavailableError as exc:
        require_peer(f"PostgreSQL ({exc})", False, POSTGRES_HINT)
        raise  # not reached: require_peer fails or skips
    try:
        cluster.start()
        yield cluster.admin_url
    finally:
        cluster.stop()


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string (for psycopg itself)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped (forcibly) after the test."""
    name = f"t_{uuid.uuid4().hex}"
    admin = _libpq(postgres_server)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            make_url(postgres_server)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty database: SQLite in ``tmp_path``, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 't.db'}"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory of the migrated database; its engine is disposed after the test."""
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")
