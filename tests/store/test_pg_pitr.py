"""PostgreSQL point-in-time recovery, done as the README tells an operator: WAL archiving on the server
(``archive_command``), a base backup (``pg_basebackup``), then, after the disaster, the base backup
with ``restore_command`` and ``recovery_target_time``; the home (keys, blobs) comes back from the
replica (``prescreen restore --replica``). The database is then exactly as it was at that moment:
the studies committed before it and none after, every blob readable, the audit chain intact."""

from __future__ import annotations

import os
import pwd
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from prescreen.pipeline.runtime import open_store
from prescreen.security.keys import audit_public_key
from prescreen.store.audit import verify
from prescreen.store.backup import restore_replica_only
from tests.pg_cluster import PG_USER, ClusterUnavailableError, PgCluster
from tests.store.test_backup import (
    _add_study,
    cheap_password_hashing,  # noqa: F401  (autouse fixture)
    dispose,
    forget_keyrings,
    own_keyrings,  # noqa: F401  (autouse fixture)
    state_of,
    use_home,
)
from tests.store.test_worklist import reader


@pytest.fixture
def archiving_cluster() -> Iterator[tuple[PgCluster, Path]]:
    try:
        cluster = PgCluster()
    except ClusterUnavailableError as exc:
        pytest.skip(str(exc))
    archive = cluster.root / "archive"
    archive.mkdir()
    if cluster.as_user is not None:
        entry = pwd.getpwnam(PG_USER)
        os.chown(archive, entry.pw_uid, entry.pw_gid)
    conf = (  # the README's settings
        "wal_level = replica\narchive_mode = on\n"
        f"archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f.part && mv {archive}/%f.part {archive}/%f'\n"
        "archive_timeout = 60\n"
    )
    cluster.start(conf, durable=True)
    try:
        yield cluster, archive
    finally:
        cluster.stop()


def _sql(cluster: PgCluster, statement: str) -> object:
    with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user={PG_USER} dbname=postgres", autocommit=True) as c:
        cursor = c.execute(statement)
        row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None


def test_point_in_time_recovery_brings_back_the_database_as_it_was(
    archiving_cluster: tuple[PgCluster, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, archive = archiving_cluster
    _sql(cluster, "CREATE DATABASE prescreen")
    url = f"postgresql+psycopg://{PG_USER}@127.0.0.1:{cluster.port}/prescreen"
    master, replica = tmp_path / "vault" / "master.key", tmp_path / "other-disk" / "replica"
    monkeypatch.setenv("PRESCREEN_REPLICA_DIR", str(replica))
    settings = use_home(monkeypatch, tmp_path / "home", master, url)
    ingestor = open_store(settings)
    try:
        ann = reader(ingestor.sessions, "ann.attending", "attending")
        cy = reader(ingestor.sessions, "cy.assoc", "associate_chief")
        _add_study(ingestor, ann, cy, 0)
        base = cluster.root / "base"
        done = cluster._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", PG_USER, "-c", "fast", "-D", str(base)
        )
        assert done.returncode == 0, done.stderr
        _add_study(ingestor, ann, cy, 1)
        at_moment = state_of(ingestor)
        time.sleep(1.1)
        target = datetime.now(UTC)
        time.sleep(1.1)
        _add_study(ingestor, ann, cy, 2)  # after the target: must not come back
        # the segment holding the last commit is closed; wait until the archiver has that very one
        closed = str(_sql(cluster, "SELECT pg_walfile_name(pg_switch_wal())"))
        deadline = time.monotonic() + 60
        archived = "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
        while time.monotonic() < deadline and str(_sql(cluster, archived)) < closed:
            time.sleep(0.2)
        assert str(_sql(cluster, archived)) >= closed, f"{closed} was not archived within 60 s"
    finally:
        dispose(ingestor)
    assert len(at_moment["studies"]) == 2

    # the disaster: the server's data and the home are lost; the archive, base backup and replica remain
    cluster._run("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "stop")
    shutil.rmtree(cluster.data)
    shutil.rmtree(tmp_path / "home")
    shutil.copytree(base, cluster.data)
    (cluster.data / "recovery.signal").touch()
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nrestore_command = 'cp {archive}/%f %p'\nrecovery_target_time = '{target.isoformat()}'\n"
            "recovery_target_action = 'promote'\n"
        )
    if cluster.as_user is not None:
        entry = pwd.getpwnam(PG_USER)
        for path in [cluster.data, *cluster.data.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    cluster.data.chmod(0o700)
    cluster.launch(durable=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _sql(cluster, "SELECT pg_is_in_recovery()"):
        time.sleep(0.2)

    url = f"postgresql+psycopg://{PG_USER}@127.0.0.1:{cluster.port}/prescreen"
    forget_keyrings(monkeypatch)
    monkeypatch.delenv("PRESCREEN_REPLICA_DIR")
    restored = use_home(monkeypatch, tmp_path / "home", master, url)
    brought = restore_replica_only(restored, replica)
    assert brought["database"] is False and int(brought["blobs"]) > 0  # PostgreSQL's own recovery did that
    ingestor = open_store(restored)
    try:
        after = state_of(ingestor)
        for part in ("studies", "instances", "reports", "signatures", "signing_keys", "audit"):
            assert after[part] == at_moment[part], part
        for key in {k for _, k, _, _ in after["instances"]}:
            assert after["blobs"][key] == at_moment["blobs"][key]
        verdict = verify(ingestor.sessions, audit_public_key(restored))
        assert verdict.ok, verdict.reason
    finally:
        dispose(ingestor)
