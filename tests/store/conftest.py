"""Database fixtures of the store tests: every test that asks for ``database_url`` runs on
SQLite and on PostgreSQL.

PostgreSQL: one throwaway cluster for the whole test session (``initdb`` + ``pg_ctl`` on a
free port, ``fsync=off``), or the server named by ``PRESCREEN_TEST_POSTGRES_URL``; each test
gets its own fresh database, dropped afterwards. Without the PostgreSQL binaries the
``postgresql`` tests are skipped, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from sqlalchemy import make_url
from sqlalchemy.orm import Session, sessionmaker

from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory

BACKENDS = ["sqlite", "postgresql"]
PG_USER = "postgres"


def _pg_bin_dir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else the newest Debian/Ubuntu install."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0] or 0)
    )
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _unavailable(reason: str) -> NoReturn:
    """Fail under CI (which installs PostgreSQL), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Cluster:
    """A throwaway PostgreSQL cluster in a temporary folder (run as ``postgres`` when we are root)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                _unavailable(f"running as root and there is no {PG_USER!r} user to run the server as")
            self.as_user = PG_USER
        # under /tmp (not $TMPDIR, which may be private to root) so that the server's user reaches it
        self.root = Path(tempfile.mkdtemp(prefix="prescreen-pg-", dir="/tmp" if self.as_user else None))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.sockets.mkdir()
        self.log = self.root / "server.log"
        self.log.touch()
        if self.as_user is not None:
            entry = pwd.getpwnam(self.as_user)
            for path in (self.root, self.sockets, self.log):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        self.port = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_user is not None:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.as_user, "--", *cmd]
            else:
                cmd = ["su", self.as_user, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        for _ in range(3):  # the free port may be taken in between: try another
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
            )
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
            )
            if done.returncode == 0:
                return
        raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{self.log.read_text()}")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``) of the session's server."""
    external = os.environ.get("PRESCREEN_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        _unavailable("initdb/pg_ctl not found (install the Debian package 'postgresql')")
    cluster = _Cluster(bin_dir)
    try:
        cluster.start()
        yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:{cluster.port}/postgres"
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
