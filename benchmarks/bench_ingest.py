"""Ingestion benchmark: C-STORE into the prescreen listener vs DCMTK ``storescp``, STOW-RS, and the
time from a complete study to its screening result.

Measures, on this machine, with ``prescreen serve`` (the real product: BentoML + DICOM listener):

1. C-STORE throughput: the same freshly generated files (new UIDs every round, so the listener stores
   them instead of taking its duplicate path) sent by one ``storescu`` association each to DCMTK's
   ``storescp`` (baseline) and to the prescreen listener (``PRESCREEN_WORKER_THREADS=0``: no
   screening), alternating which receiver goes first; median instances/s and MB/s over the rounds
   and the ratio prescreen/storescp. Synthetic 256x256 16-bit CR (~130 kB, one study in a few
   series) and the shipped ``US1_UNCR.dcm`` (~0.9 MB) with new UIDs. One re-send of already stored
   instances measures the duplicate path separately.
2. STOW-RS throughput to the same server in the same rounds: fresh CR instances, ``POST
   /dicomweb/studies`` of ``--stow-batch`` instances per request, one keep-alive client; median
   instances/s and MB/s, and the ratio to C-STORE of the same kind of file to that server.
3. Complete → result: a second ``prescreen serve`` with its screening worker and
   ``PRESCREEN_STUDY_QUIET_SECONDS=2`` under a steady load of one-instance chest CR studies sent by
   concurrent ``storescu`` processes; per study, from the server's own timestamps,
   ``screened_at - (last_instance_at + quiet)`` and ``screened_at - last_instance_at``, p50/p95.

MB are 10^6 bytes of DICOM files. ``storescp`` writes each file without fsync; prescreen fsyncs
the blob and its folder and commits a SQLite transaction before it acknowledges.

Usage: ``python benchmarks/bench_ingest.py [--instances 200] [--us-instances 40] [--rounds 5]
[--stow-batch 10] [--stow-requests 20] [--load-seconds 60] [--load-interval 1] [--senders 3]
[--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pydicom
from common import free_port, percentile, start_server, stop_server, write_section
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from prescreen.config import Settings

STORESCU = shutil.which("storescu") or "/usr/bin/storescu"
STORESCP = shutil.which("storescp") or "/usr/bin/storescp"
ECHOSCU = shutil.which("echoscu") or "/usr/bin/echoscu"
US_SAMPLE = Path("/work/shared/data/dicom/US1_UNCR.dcm")
PRESCREEN_AE = "PRESCREEN"
STORESCP_AE = "STORESCP"
FINAL = ("screened", "failed", "unscreenable")
POLL_SECONDS = float(Settings.model_fields["worker_poll_seconds"].default)
# DCMTK as packaged here leaves Nagle's algorithm on unless TCP_NODELAY=1: each C-STORE then waits
# ~40 ms for a delayed ACK (storescp ~20 instances/s), which would measure TCP, not the receivers.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


# -- synthetic instances -------------------------------------------------------------------------
def cr_dataset(rng: np.random.Generator, size: int = 256) -> pydicom.Dataset:
    """A 16-bit (12 bits stored) chest CR template: a smooth gradient with noise."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.PatientID = "BENCH-0001"
    ds.PatientName = "Bench^Ingest"
    ds.StudyDate = "20240315"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:size, 0:size]
    image = 1500 + 1500 * np.sin(xx / size * np.pi) * np.cos((yy / size - 0.5) * np.pi) + rng.normal(0, 60, xx.shape)
    ds.PixelData = np.clip(image, 0, 4095).astype(np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def write_instances(template: pydicom.Dataset, folder: Path, n: int, series: int = 4) -> list[Path]:
    """``n`` copies of ``template`` in ``folder``: one new study split in ``series`` series, new UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in range(max(1, min(series, n)))]
    paths = []
    for i in range(n):
        ds = template
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids[i % len(series_uids)]
        ds.SeriesNumber = i % len(series_uids) + 1
        ds.InstanceNumber = i // len(series_uids) + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def study_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def total_mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


# -- receivers -----------------------------------------------------------------------------------
@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (for a server started meanwhile); restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_for_echo(ae: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmd = [ECHOSCU, "-aec", ae, "127.0.0.1", str(port)]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"no C-ECHO answer from {ae} on port {port} in {timeout:.0f} s")


@dataclass
class Prescreen:
    """A running ``prescreen serve`` with its own home and ports."""

    proc: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    home: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextmanager
def prescreen_serve(home: Path, **settings: str) -> Iterator[Prescreen]:
    """``prescreen serve`` on free ports with ``PRESCREEN_<KEY>`` settings and a fresh home."""
    http_port, dicom_port = free_port(), free_port()
    env = {
        "PRESCREEN_HOME": str(home),
        "PRESCREEN_DICOM_PORT": str(dicom_port),
        "PRESCREEN_DICOM_AE_TITLE": PRESCREEN_AE,
    }
    env |= {f"PRESCREEN_{k.upper()}": v for k, v in settings.items()}
    with environment(env):
        proc = start_server(http_port)
    try:
        wait_for_echo(PRESCREEN_AE, dicom_port)
        yield Prescreen(proc, http_port, dicom_port, home)
    finally:
        stop_server(proc)


@contextmanager
def storescp(out_dir: Path) -> Iterator[int]:
    """DCMTK ``storescp`` (plain: no fork, writes each file, no fsync) on a free port."""
    port = free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [STORESCP, "-aet", STORESCP_AE, "-od", str(out_dir), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_echo(STORESCP_AE, port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def send(ae: str, port: int, paths: list[Path]) -> float:
    """Seconds for one ``storescu`` association that stores ``paths``."""
    start = time.perf_counter()
    run = subprocess.run(
        [STORESCU, "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), *map(str, paths)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if run.returncode != 0 or "Failed" in run.stderr:
        raise SystemExit(f"storescu to {ae}:{port} failed ({run.returncode}): {run.stderr[-500:]}")
    return elapsed


def stored_instances(client: httpx.Client, base: str, study_uid: str) -> int:
    """How many instances prescreen holds of a study (sum over its series)."""
    items = client.get(f"{base}/v1/studies", params={"study_uid": study_uid}).json()["items"]
    if not items:
        return 0
    detail = client.get(f"{base}/v1/studies/{items[0]['study_id']}").json()
    return sum(int(s["instances"]) for s in detail["series"])


# -- STOW-RS -------------------------------------------------------------------------------------
def stow_body(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = f"bench-{uuid.uuid4().hex}"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: httpx.Client, base: str, paths: list[Path], batch: int) -> tuple[float, list[float]]:
    """Total seconds, and seconds per request, to POST ``paths`` in batches (bodies built beforehand)."""
    requests = [stow_body([p.read_bytes() for p in paths[i : i + batch]]) for i in range(0, len(paths), batch)]
    times = []
    start = time.perf_counter()
    for body, content_type in requests:
        t = time.perf_counter()
        r = client.post(
            f"{base}/dicomweb/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        times.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise SystemExit(f"STOW-RS answered {r.status_code}: {r.text[:500]}")
    return time.perf_counter() - start, times


# -- part 1 and 3: throughput --------------------------------------------------------------------
def throughput(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, float], list[str]]:
    rng = np.random.default_rng(0)
    cr = cr_dataset(rng)
    us = pydicom.dcmread(US_SAMPLE) if args.us_instances and US_SAMPLE.is_file() else None
    kinds = {"CR 256x256 16-bit": (cr, args.instances)}
    if us is not None:
        kinds["US1_UNCR (0.9 MB)"] = (us, args.us_instances)
    rate: dict[tuple[str, str], list[float]] = {}
    mbps: dict[tuple[str, str], list[float]] = {}
    stow_rate: list[float] = []
    stow_mbps: list[float] = []
    stow_request_s: list[float] = []
    dup: tuple[float, float] | None = None
    sent_storescp = 0
    with (
        prescreen_serve(tmp / "home-ingest", worker_threads="0") as server,
        storescp(tmp / "storescp") as scp_port,
        httpx.Client(timeout=120) as client,
    ):
        receivers = {"storescp": (STORESCP_AE, scp_port), "prescreen": (PRESCREEN_AE, server.dicom_port)}
        order = list(receivers)
        send(PRESCREEN_AE, server.dicom_port, write_instances(cr, tmp / "warmup", 5))  # warm-up
        for rnd in range(args.rounds):
            for kind, (template, n) in kinds.items():
                paths = write_instances(template, tmp / f"r{rnd}" / kind.split()[0], n)
                size = total_mb(paths)
                for name in order if rnd % 2 == 0 else order[::-1]:
                    seconds = send(*receivers[name], paths)
                    rate.setdefault((kind, name), []).append(n / seconds)
                    mbps.setdefault((kind, name), []).append(size / seconds)
                sent_storescp += n
                held = stored_instances(client, server.base, study_uid_of(paths[0]))
                if held != n:
                    raise SystemExit(f"prescreen holds {held} of {n} instances sent ({kind}, round {rnd})")
                if rnd == args.rounds - 1 and kind.startswith("CR"):
                    seconds = send(PRESCREEN_AE, server.dicom_port, paths)  # already stored: duplicate path
                    dup = (n / seconds, size / seconds)
            if args.stow_requests:
                paths = write_instances(cr, tmp / f"r{rnd}" / "stow", args.stow_batch * args.stow_requests)
                seconds, per_request = stow(client, server.base, paths, args.stow_batch)
                stow_rate.append(len(paths) / seconds)
                stow_mbps.append(total_mb(paths) / seconds)
                stow_request_s += per_request
                held = stored_instances(client, server.base, study_uid_of(paths[0]))
                if held != len(paths):
                    raise SystemExit(f"prescreen holds {held} of {len(paths)} STOW-RS instances (round {rnd})")
            shutil.rmtree(tmp / f"r{rnd}")
        written = sum(1 for p in (tmp / "storescp").iterdir() if p.is_file())
        if written != sent_storescp:
            raise SystemExit(f"storescp wrote {written} of {sent_storescp} files sent")

    med = {k: statistics.median(v) for k, v in rate.items()}
    med_mb = {k: statistics.median(v) for k, v in mbps.items()}
    rows: dict[str, float] = {}
    for kind in kinds:
        for name in receivers:
            rows[f"C-STORE {kind} → {name}: instances/s"] = med[(kind, name)]
            rows[f"C-STORE {kind} → {name}: MB/s"] = med_mb[(kind, name)]
        rows[f"C-STORE {kind}: prescreen/storescp ratio"] = med[(kind, "prescreen")] / med[(kind, "storescp")]
    if dup is not None:
        rows["C-STORE CR, duplicate re-send → prescreen: instances/s"] = dup[0]
    if stow_rate:
        batch = args.stow_batch
        rows[f"STOW-RS CR ({batch}/request) → prescreen: instances/s"] = statistics.median(stow_rate)
        rows[f"STOW-RS CR ({batch}/request) → prescreen: MB/s"] = statistics.median(stow_mbps)
        rows[f"STOW-RS request p50 ms ({batch} instances)"] = statistics.median(stow_request_s) * 1000
        rows[f"STOW-RS request p95 ms ({batch} instances)"] = percentile(stow_request_s, 95) * 1000
        cr_kind = next(iter(kinds))
        rows["STOW-RS/C-STORE CR ratio (prescreen)"] = statistics.median(stow_rate) / med[(cr_kind, "prescreen")]
    notes = [
        f"- C-STORE: one `storescu` association per receiver and round carrying all files (timed: the "
        f"`storescu` process, start-up included); {args.rounds} rounds, receivers alternate which goes "
        f"first; new UIDs every round. CR: {args.instances} instances of one study in 4 series "
        f"(~{total_mb(write_instances(cr, tmp / 'size', 1)) * 1000:.0f} kB each)"
        + (f"; US: {args.us_instances} copies of `US1_UNCR.dcm`." if us is not None else "."),
        "- Fairness: `storescp` (plain, no `--fork`, default options) writes each file and answers without "
        "fsync; prescreen acknowledges only after fsyncing the blob and its folder and committing the "
        "SQLite transaction (WAL). Both write to the same file system. The prescreen server runs with "
        "`PRESCREEN_WORKER_THREADS=0` (no screening). `storescu` and `storescp` run with `TCP_NODELAY=1`: "
        "DCMTK 3.6.7 as packaged here keeps Nagle's algorithm on otherwise, and every C-STORE to `storescp` "
        "then stalls ~40 ms on a delayed ACK (~20 instances/s, whatever the file size).",
    ]
    if stow_rate:
        notes.append(
            f"- STOW-RS: {args.stow_requests} requests × {args.stow_batch} fresh CR instances per round, one "
            "keep-alive httpx client, bodies built before timing; instances/s over the whole batch of "
            "requests; the ratio is against C-STORE of the same CR files to the same server."
        )
    return rows, notes


# -- part 2: complete → result -------------------------------------------------------------------
def complete_to_result(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, float], list[str]]:
    quiet = args.quiet_seconds
    n_studies = max(1, int(args.load_seconds / args.load_interval))
    cr = cr_dataset(np.random.default_rng(1))
    studies = [write_instances(cr, tmp / "load" / f"s{i:04d}", 1)[0] for i in range(n_studies)]
    uids = {study_uid_of(p) for p in studies}
    send_s: list[float] = []
    errors: list[str] = []
    with prescreen_serve(tmp / "home-latency", study_quiet_seconds=str(quiet)) as server:
        t0 = time.monotonic() + 0.5
        lock = threading.Lock()

        def sender(k: int) -> None:
            for i in range(k, n_studies, args.senders):
                delay = t0 + i * args.load_interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    seconds = send(PRESCREEN_AE, server.dicom_port, [studies[i]])
                except SystemExit as exc:
                    with lock:
                        errors.append(str(exc))
                    continue
                with lock:
                    send_s.append(seconds)

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(args.senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_end = time.monotonic()
        final: dict[str, dict[str, str]] = {}
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < deadline:
                items = client.get(f"{server.base}/v1/studies", params={"limit": 500}).json()["items"]
                final = {i["study_uid"]: i for i in items if i["study_uid"] in uids and i["status"] in FINAL}
                if len(final) == len(uids):
                    break
                time.sleep(0.5)
        drain = time.monotonic() - load_end
    if errors:
        raise SystemExit(f"{len(errors)} sends failed under load: {errors[0]}")
    if len(final) < len(uids):
        raise SystemExit(f"only {len(final)} of {len(uids)} studies reached a final status in {args.drain_timeout} s")
    statuses = [i["status"] for i in final.values()]
    received = [datetime.fromisoformat(i["last_instance_at"]) for i in final.values()]
    screened = [datetime.fromisoformat(i["screened_at"]) for i in final.values()]
    after_last = [(s - r).total_seconds() for s, r in zip(screened, received, strict=True)]
    after_complete = [t - quiet for t in after_last]
    span = (max(screened) - min(received)).total_seconds()
    rows = {
        "complete → result p50 s": statistics.median(after_complete),
        "complete → result p95 s": percentile(after_complete, 95),
        "complete → result max s": max(after_complete),
        "last instance → result p50 s": statistics.median(after_last),
        "last instance → result p95 s": percentile(after_last, 95),
        "studies screened/s (first received → last screened)": len(final) / span,
        "storescu send p50 ms under load (1 instance)": statistics.median(send_s) * 1000,
    }
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in FINAL if statuses.count(s))
    notes = [
        f"- Complete → result: `prescreen serve` with 1 screening worker (default), "
        f"`PRESCREEN_STUDY_QUIET_SECONDS={quiet:g}`, worker poll {POLL_SECONDS:g} s (default); "
        f"offered load one 1-instance chest CR study every {args.load_interval:g} s for {args.load_seconds:g} s "
        f"({n_studies} studies) from "
        f"{args.senders} concurrent `storescu` processes. Outcome: {counts}; last result {drain:.1f} s after the "
        "last send. Times from the server's `last_instance_at` and `screened_at`; complete = last instance + quiet.",
    ]
    return rows, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=200, help="CR instances per C-STORE round")
    ap.add_argument("--us-instances", type=int, default=40, help="copies of US1_UNCR.dcm per round (0: skip)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--stow-batch", type=int, default=10, help="instances per STOW-RS request")
    ap.add_argument("--stow-requests", type=int, default=20, help="STOW-RS requests per round (0: skip)")
    ap.add_argument("--load-seconds", type=float, default=60.0, help="duration of the steady study load (0: skip)")
    ap.add_argument("--load-interval", type=float, default=1.0, help="seconds between studies (all senders)")
    ap.add_argument("--senders", type=int, default=3, help="concurrent storescu processes under load")
    ap.add_argument("--quiet-seconds", type=float, default=2.0)
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section to this file")
    args = ap.parse_args()

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as name:
        tmp = Path(name)
        rows, notes = throughput(args, tmp)
        if args.load_seconds > 0:
            more_rows, more_notes = complete_to_result(args, tmp)
            rows |= more_rows
            notes += more_notes
    notes.append(f"- Whole benchmark: {time.monotonic() - start:.0f} s.")
    intro = (
        "`prescreen serve` (BentoML + pynetdicom listener, SQLite, fresh `PRESCREEN_HOME`) vs DCMTK "
        "`storescp` 3.6 receiving the same files from DCMTK `storescu`, all on this machine; medians over rounds."
    )
    write_section("Ingestion", intro, rows, notes, args.out)


if __name__ == "__main__":
    main()
