"""Edge uplink failover benchmark: how long an edge node takes to switch to its standby uplink.

Starts, on this machine, two central ``prescreen serve`` processes (A, B: their own homes and ports,
DICOM listener off, no screening) and one ``prescreen edge --forward-to A --forward-to B`` (quiet
period 0.3 s, outbox poll 0.1 s, the default checks: every 0.5 s, 0.8 s timeout). A stream of
one-instance CR studies goes into the edge by C-STORE (pynetdicom), one every ``--every`` seconds.
Each trial, with the edge sending to A:

* ``kill``: A's processes get SIGKILL (a crash: connections refused from then on); A is then
  restarted with the same home and port.
* ``hang``: A's processes get SIGSTOP (a silent uplink: connections accepted, never answered, as
  when a link drops packets); then SIGCONT.

Measured, from the edge's own delivery records: the switch time, from the signal to the first
study delivered to B (it includes up to one quiet period + poll of study availability, ~0.1-0.4 s);
and the time back, from A answering ``/readyz`` again (kill) or SIGCONT (hang) to the first study
delivered to A. Afterwards every study sent is checked: delivered, stored by the central the edge
recorded, and no central stores a SOP instance twice.

Usage: ``python benchmarks/bench_failover.py [--kills 3] [--hangs 2] [--every 0.1] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import free_port, lab_env, write_section
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from prescreen.integration.dicom_send import DicomDestination, c_store

CLI = [sys.executable, "-m", "prescreen.cli"]
START_TIMEOUT_S = 180.0


def cr() -> Dataset:
    """A tiny synthetic CR instance in a study of its own."""
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "CR", "BENCH-0001", "Bench^Failover"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64 * 64)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ds


def rows_of(db: Path, query: str) -> list[tuple[Any, ...]]:
    """Rows of a query on a SQLite database read-only; [] while it does not exist or is busy."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [tuple(row) for row in con.execute(query).fetchall()]
    except sqlite3.OperationalError:
        return []


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"not within {timeout:.0f} s: {what}")


def family(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The process and all its descendants (BentoML's worker runs in a session of its own)."""
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_all(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    for member in family(proc):
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    members = family(proc)
    signal_all(proc, signal.SIGCONT)
    signal_all(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=20)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class Central:
    """A central ``prescreen serve`` with its own home and port."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.home = root / name
        self.port = free_port()
        self.log = root / f"central-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = lab_env(
            {
                **os.environ,
                "PRESCREEN_HOME": str(self.home),
                "PRESCREEN_DICOM_PORT": "0",
                "PRESCREEN_WORKER_THREADS": "0",
            }
        )
        cmd = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def instances(self) -> list[tuple[str, str]]:
        rows = rows_of(
            self.home / "prescreen.db",
            "select st.study_uid, i.sop_instance_uid from instances i"
            " join series se on se.id = i.series_id join studies st on st.id = se.study_id",
        )
        return [(str(study), str(sop)) for study, sop in rows]


class Edge:
    """``prescreen edge --forward-to A --forward-to B`` and a stream of studies into it."""

    def __init__(self, root: Path, uplinks: list[str], every: float) -> None:
        self.home = root / "edge"
        self.port = free_port()
        self.log = root / "edge.log"
        self.every = every
        self.sent: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        env = lab_env(
            {
                **os.environ,
                "PRESCREEN_HOME": str(self.home),
                "PRESCREEN_STUDY_QUIET_SECONDS": "0.3",
                "PRESCREEN_WORKER_POLL_SECONDS": "0.1",
                "PRESCREEN_DELIVERY_BACKOFF_SECONDS": "0.5",
                "PRESCREEN_DELIVERY_MAX_ATTEMPTS": "100",
            }
        )
        cmd = [*CLI, "edge", "--dicom-port", str(self.port)]
        for uplink in uplinks:
            cmd += ["--forward-to", uplink]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def send_one(self) -> None:
        ds = cr()
        c_store([ds], DicomDestination("PRESCREEN", "127.0.0.1", self.port), calling_ae="BENCH", timeout=10)
        self.sent.append(str(ds.StudyInstanceUID))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_one()
            except Exception as exc:
                self.errors.append(repr(exc))
            self._stop.wait(self.every)

    def start_stream(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop_stream(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def deliveries(self) -> dict[str, tuple[str, str, datetime | None]]:
        """Study UID → (state, destination, delivered_at) of the edge's forward deliveries."""
        rows = rows_of(
            self.home / "prescreen.db",
            "select s.study_uid, d.state, d.destination, d.delivered_at from deliveries d"
            " join studies s on s.id = d.study_id where d.kind = 'forward'",
        )
        return {str(u): (str(s), str(d), parse_time(t) if t else None) for u, s, d, t in rows}

    def first_delivery_to(self, url: str, after: datetime) -> datetime | None:
        times = [t for _, d, t in self.deliveries().values() if d == url and t is not None and t > after]
        return min(times, default=None)

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


def trial(kind: str, a: Central, b: Central, edge: Edge) -> tuple[float, float]:
    """One trial: (switch seconds, back seconds)."""
    started = datetime.now(UTC)
    wait_for(lambda: edge.first_delivery_to(a.url, started), 30, "the edge is not sending to A")
    assert a.proc is not None
    signalled = datetime.now(UTC)
    if kind == "kill":
        signal_all(a.proc, signal.SIGKILL)
        psutil.wait_procs(family(a.proc), timeout=20)
        a.proc.wait(timeout=10)
    else:
        signal_all(a.proc, signal.SIGSTOP)
    switched = wait_for(lambda: edge.first_delivery_to(b.url, signalled), 60, "no study reached B")
    time.sleep(2)  # some studies go to B meanwhile
    if kind == "kill":
        a.start()
        wait_for(a.ready, START_TIMEOUT_S, "A not ready again", 0.2)
    else:
        signal_all(a.proc, signal.SIGCONT)
    answering = datetime.now(UTC)
    back = wait_for(lambda: edge.first_delivery_to(a.url, answering), 60, "the edge did not go back to A")
    return (switched - signalled).total_seconds(), (back - answering).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="trials where A gets SIGKILL")
    parser.add_argument("--hangs", type=int, default=2, help="trials where A gets SIGSTOP")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between two studies sent to the edge")
    parser.add_argument("--out", type=Path, default=None, help="append a Markdown section to this file")
    args = parser.parse_args()
    results: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        a, b = Central(root, "a"), Central(root, "b")
        edge = Edge(root, [a.url, b.url], args.every)
        try:
            a.start()
            b.start()
            wait_for(lambda: a.ready() and b.ready(), START_TIMEOUT_S, "centrals not ready", 0.5)
            wait_for(edge.listening, 60, "edge not listening", 0.2)
            edge.start_stream()
            for kind in ["kill"] * args.kills + ["hang"] * args.hangs:
                switch, back = trial(kind, a, b, edge)
                results.append((kind, switch, back))
                print(f"{kind}: switch {switch:.2f} s, back {back:.2f} s", flush=True)
            edge.stop_stream()
            wait_for(
                lambda: all(edge.deliveries().get(u, ("",))[0] == "delivered" for u in edge.sent),
                60,
                "not every study delivered",
                0.2,
            )
            deliveries = edge.deliveries()
            stored = {a.url: a.instances(), b.url: b.instances()}
        finally:
            edge.stop_stream()
            stop(edge.proc)
            stop(a.proc)
            stop(b.proc)
    studies = {url: {study for study, _ in rows} for url, rows in stored.items()}
    lost = [u for u in edge.sent if u not in studies.get(deliveries[u][1], set())]
    twice = sum(len(rows) - len({sop for _, sop in rows}) for rows in stored.values())
    rows: dict[str, float] = {}
    for kind, label in (("kill", "A killed (SIGKILL)"), ("hang", "A silent (SIGSTOP)")):
        switches = [s for k, s, _ in results if k == kind]
        backs = [t for k, _, t in results if k == kind]
        if switches:
            rows[f"{label}: switch to B, median (s)"] = statistics.median(switches)
            rows[f"{label}: switch to B, max (s)"] = max(switches)
            rows[f"{label}: back to A after it answers, median (s)"] = statistics.median(backs)
    rows["studies sent"] = float(len(edge.sent))
    rows["studies lost"] = float(len(lost))
    rows["SOP instances stored twice on one central"] = float(twice)
    rows["studies refused by the edge"] = float(len(edge.errors))
    extra = [
        "| trial | signal | switch to B (s) | back to A (s) |",
        "| --- | --- | --- | --- |",
        *[f"| {i + 1} | {k} | {s:.2f} | {t:.2f} |" for i, (k, s, t) in enumerate(results)],
        "",
        f"- Switch: from the signal to A's processes to the first study the edge records as delivered to B "
        f"(includes up to ~0.4 s until the next study is complete and claimed: one study every {args.every:g} s, "
        "quiet period 0.3 s, outbox poll 0.1 s). Back: from A answering /readyz again (after a restart with "
        "the same home and port) or SIGCONT, to the first study delivered to A (two good checks, 0.5 s apart).",
        "- Goal: switch within 3 s. A killed: the next send to A is refused and goes on to B in the same "
        "attempt. A silent: two health checks time out (0.8 s each), then the send in flight is given up.",
    ]
    intro = f"{args.kills} kill and {args.hangs} hang trials, one edge and two centrals on this machine."
    write_section("Edge uplink failover", intro, rows, extra, args.out)


if __name__ == "__main__":
    main()
