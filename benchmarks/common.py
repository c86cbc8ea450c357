"""Helpers shared by the benchmarks: a served prescreen process, timing, load, report."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LAB_NETWORK = {"PRESCREEN_ANONYMOUS_PERMISSIONS": "screen,ingest,studies:read,models:read", "PRESCREEN_MFA": "step-up"}
"""The benchmarks send without credentials, as senders on a trusted lab network (the service's default is
to refuse them); set these variables yourself to measure otherwise."""


def lab_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with :data:`LAB_NETWORK` where it does not say otherwise."""
    env = dict(os.environ if base is None else base)
    return {**LAB_NETWORK, **env}


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prescreen.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=lab_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("server did not become ready in 120 s")


def multipart(files: dict[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (name, data)) for name, data in files.items()]


def served_sequential(base: str, records: list[dict[str, bytes]], form: dict[str, str] | None = None) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as client:
        client.post(f"{base}/v1/screen", files=multipart(records[0]), data=form)
        for files in records:
            start = time.perf_counter()
            r = client.post(f"{base}/v1/screen", files=multipart(files), data=form)
            times.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
    return times


def served_concurrent(
    base: str, records: list[dict[str, bytes]], clients: int, seconds: float, form: dict[str, str] | None = None
) -> tuple[int, int]:
    done = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = k
            while time.monotonic() < stop:
                r = client.post(f"{base}/v1/screen", files=multipart(records[i % len(records)]), data=form)
                if r.status_code == 200:
                    done[k] += 1
                else:
                    errors[k] += 1
                i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), sum(errors)


def measure_training(task: str, epochs: int) -> str:
    """Run ``prescreen train TASK`` on its full default data set for a few epochs; wall time, peak RSS."""
    import resource
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "prescreen.cli",
                "train",
                task,
                "--out",
                f"{tmp}/run",
                "--epochs",
                str(epochs),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        info = json.loads(Path(f"{tmp}/run/train.json").read_text())
    peak = info.get("peak_rss_mb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return (
        f"- `prescreen train {task} --epochs {epochs}` on the full set ({info['n_records']} records, cached "
        f"preprocessing): {wall:.0f} s wall including start-up, {info['train_seconds'] / epochs:.0f} s per epoch "
        f"(train + validation), peak RSS {peak:.0f} MB"
    )


def machine_line() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"Machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}."


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def time_calls(fn: Callable[[dict[str, bytes]], object], records: list[dict[str, bytes]]) -> list[float]:
    """Milliseconds per call of ``fn`` on each record (after one warm-up call)."""
    fn(records[0])
    times = []
    for files in records:
        start = time.perf_counter()
        fn(files)
        times.append((time.perf_counter() - start) * 1000)
    return times


def compare_served(
    local: list[float],
    records: list[dict[str, bytes]],
    clients: int,
    seconds: float,
    form: dict[str, str] | None = None,
    screen: Callable[[dict[str, bytes]], object] | None = None,
) -> dict[str, float]:
    """Start ``prescreen serve``; served p50/p95 (one client), throughput (``clients``), vs ``local``
    (in-process calls back to back). With ``screen`` (the in-process call), also both measured
    interleaved: one in-process call, then one served request, and so on, so that each in-process
    call also follows a pause as a served one does and drift over the run hits both alike."""
    port = free_port()
    proc = start_server(port)
    base = f"http://127.0.0.1:{port}"
    try:
        served = served_sequential(base, records, form)
        mixed = interleaved(base, records, screen, form) if screen is not None else None
        ok, errors = served_concurrent(base, records, clients, seconds, form)
    finally:
        stop_server(proc)
    rows = {
        "in-process p50 ms": statistics.median(local),
        "in-process p95 ms": percentile(local, 95),
        "served p50 ms (1 client)": statistics.median(served),
        "served p95 ms (1 client)": percentile(served, 95),
        "served/in-process p50 ratio": statistics.median(served) / statistics.median(local),
    }
    if mixed is not None:
        inside, outside = mixed
        rows["interleaved: in-process p50 ms"] = statistics.median(inside)
        rows["interleaved: served p50 ms"] = statistics.median(outside)
        rows["interleaved: served/in-process p50 ratio"] = statistics.median(outside) / statistics.median(inside)
    rows[f"served throughput req/s ({clients} clients, {seconds:.0f} s)"] = ok / seconds
    rows["errors under load"] = float(errors)
    return rows


def interleaved(
    base: str,
    records: list[dict[str, bytes]],
    screen: Callable[[dict[str, bytes]], object],
    form: dict[str, str] | None = None,
) -> tuple[list[float], list[float]]:
    """In-process and served times (ms) of the same records, one of each in turn."""
    inside: list[float] = []
    outside: list[float] = []
    with httpx.Client(timeout=30) as client:
        for files in records:
            start = time.perf_counter()
            screen(files)
            inside.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            r = client.post(f"{base}/v1/screen", files=multipart(files), data=form)
            outside.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
    return inside, outside


def run_summary(run: Path | None) -> list[str]:
    """A line on a finished training run (wall time, epochs, peak memory) from its train.json."""
    if run is None or not (run / "train.json").is_file():
        return []
    info = json.loads((run / "train.json").read_text())
    peak = f"peak RSS {info['peak_rss_mb']} MB" if "peak_rss_mb" in info else "peak RSS not recorded by that run"
    return [
        f"- Training `{info['task']}` on {info['n_records']} records (`{run}`): {info['train_seconds'] / 60:.1f} min "
        f"wall, {info['epochs_run']} epochs (best {info['best_epoch']}), {peak}, {info.get('threads', 2)} threads"
    ]


def write_section(title: str, intro: str, rows: dict[str, float], extra: list[str], out: Path | None) -> None:
    """Print a dated Markdown section and append it to ``out``."""
    text = [
        f"## {title} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{machine_line()} {intro}",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.2f} |" for k, v in rows.items()],
        "",
        *extra,
        "",
    ]
    print("\n".join(text))
    if out:
        with out.open("a") as fh:
            fh.write("\n".join(text) + "\n")
