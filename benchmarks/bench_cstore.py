"""C-STORE ingest against a real PACS (issue 13): prescreen with and without group commit vs Orthanc
(a PACS with a durable index) and DCMTK ``storescp`` (writes files, no fsync), with one association
and with four concurrent ones, with ``TCP_NODELAY=1`` and without.

Every round sends the same number of freshly generated 256x256 16-bit CR instances (new UIDs, so
nobody takes a duplicate path) to each receiver in turn (the order rotates between rounds), timed
from the start of the first ``storescu`` to the end of the last. prescreen runs with
``PRESCREEN_WORKER_THREADS=0`` (no screening) and acknowledges only durable instances; the figure
of the issue is the ratio prescreen/Orthanc measured in the same rounds.

    python benchmarks/bench_cstore.py [--instances 200] [--rounds 3] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from bench_ingest import (
    PRESCREEN_AE,
    STORESCP_AE,
    STORESCU,
    cr_dataset,
    prescreen_serve,
    storescp,
    wait_for_echo,
    write_instances,
)
from common import free_port, write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers: a throwaway Orthanc

from tests.fixtures_dicom import _start as start_orthanc
from tests.fixtures_dicom import _stop as stop_orthanc

ASSOCIATIONS = (1, 4)


def send_parallel(ae: str, port: int, paths: list[Path], associations: int, nodelay: bool) -> float:
    """Seconds to store ``paths`` over ``associations`` concurrent ``storescu`` processes."""
    env = {**os.environ, "TCP_NODELAY": "1"} if nodelay else {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    shares = [paths[i::associations] for i in range(associations)]
    failures: list[str] = []

    def one(share: list[Path]) -> None:
        run = subprocess.run(
            [STORESCU, "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), *map(str, share)],
            env=env,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0 or "Failed" in run.stderr:
            failures.append(run.stderr[-300:])

    threads = [threading.Thread(target=one, args=(share,)) for share in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"storescu to {ae}:{port} failed: {failures[0]}")
    return elapsed


@contextmanager
def orthanc(folder: Path) -> Iterator[tuple[str, int]]:
    """Orthanc with ``TCP_NODELAY=1`` (its DCMTK reads it): its best, as storescp gets."""
    saved = os.environ.get("TCP_NODELAY")
    os.environ["TCP_NODELAY"] = "1"
    try:
        process, server = start_orthanc(folder)
    finally:
        if saved is None:
            os.environ.pop("TCP_NODELAY", None)
        else:
            os.environ["TCP_NODELAY"] = saved
    try:
        yield server.ae_title, server.dicom_port
    finally:
        stop_orthanc(process)


BARE_AE = "BAREPYNET"
BARE_SCP = """
import sys
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
ae = AE(sys.argv[1])
ae.supported_contexts = AllStoragePresentationContexts
ae.add_supported_context(Verification)
ae.maximum_pdu_size = 0
ae.start_server(("127.0.0.1", int(sys.argv[2])), evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
"""


@contextmanager
def bare_pynetdicom() -> Iterator[tuple[str, int]]:
    """pynetdicom alone, as prescreen's listener uses it, acknowledging every instance without
    reading or storing it: the ceiling of the DICOM library itself on this machine."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_SCP, BARE_AE, str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_for_echo(BARE_AE, port)
        yield BARE_AE, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="prescreen-bench-cstore-"))
    template = cr_dataset(np.random.default_rng(0))
    rate: dict[tuple[str, int, bool], list[float]] = {}
    with (
        storescp(tmp / "storescp") as scp_port,
        orthanc(tmp / "orthanc") as (orthanc_ae, orthanc_port),
        bare_pynetdicom() as (bare_ae, bare_port),
        prescreen_serve(tmp / "home-group", worker_threads="0", group_commit="true") as grouped,
        prescreen_serve(tmp / "home-single", worker_threads="0", group_commit="false") as single,
    ):
        receivers = {
            "storescp": (STORESCP_AE, scp_port),
            "Orthanc": (orthanc_ae, orthanc_port),
            "pynetdicom alone, nothing stored": (bare_ae, bare_port),
            "prescreen, group commit": (PRESCREEN_AE, grouped.dicom_port),
            "prescreen, one commit per instance": (PRESCREEN_AE, single.dicom_port),
        }
        names = list(receivers)
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for nodelay in (True, False):
                for associations in ASSOCIATIONS:
                    for name in order:
                        ae, port = receivers[name]
                        folder = tmp / f"r{round_no}-{name[:9]}-{associations}-{int(nodelay)}".replace(" ", "_")
                        paths = write_instances(template, folder, args.instances)
                        seconds = send_parallel(ae, port, paths, associations, nodelay)
                        rate.setdefault((name, associations, nodelay), []).append(args.instances / seconds)
                        for path in paths:
                            path.unlink()
    med = {key: statistics.median(values) for key, values in rate.items()}
    rows: dict[str, float] = {}
    for nodelay in (True, False):
        flag = "TCP_NODELAY=1" if nodelay else "Nagle on"
        for associations in ASSOCIATIONS:
            for name in receivers:
                rows[f"{flag}, {associations} assoc. → {name}: instances/s"] = med[(name, associations, nodelay)]
            base = med[("Orthanc", associations, nodelay)]
            rows[f"{flag}, {associations} assoc.: prescreen (group commit) / Orthanc"] = (
                med[("prescreen, group commit", associations, nodelay)] / base
            )
            rows[f"{flag}, {associations} assoc.: prescreen (per instance) / Orthanc"] = (
                med[("prescreen, one commit per instance", associations, nodelay)] / base
            )
            rows[f"{flag}, {associations} assoc.: pynetdicom alone / Orthanc"] = (
                med[("pynetdicom alone, nothing stored", associations, nodelay)] / base
            )
    notes = [
        f"- {args.instances} fresh 256x256 16-bit CR instances (~132 kB) of one study in 4 series per receiver, "
        f"mode and round; {args.rounds} rounds, medians; the receivers' order rotates between rounds. Four "
        "associations: four `storescu` processes at once, each a quarter of the files.",
        "- storescp: plain DCMTK, writes each file, no fsync. Orthanc: default storage and SQLite index, as "
        "packaged. Both receive with `TCP_NODELAY=1` (their best); the flag in each row is the senders'. "
        "prescreen: `prescreen serve` (BentoML + pynetdicom listener, SQLite, SM4-GCM at rest), no "
        "screening, each instance acknowledged only once its blob is synced and its row committed; with group "
        "commit, what arrives while a group is being made durable goes into the next group (blobs synced together, one "
        "transaction).",
        "- pynetdicom alone: the DICOM library prescreen listens with, acknowledging each instance unread "
        "(nothing parsed, stored or synced): the ceiling of any receiver built on it here.",
        "- All on this 2-core machine: the receivers and the senders share the cores.",
    ]
    write_section(
        "C-STORE ingest: prescreen vs Orthanc, 1 and 4 associations",
        "Same files to each receiver, alternating.",
        rows,
        notes,
        args.out,
    )


if __name__ == "__main__":
    main()
