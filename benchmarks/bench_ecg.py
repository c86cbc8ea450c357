"""ECG screening benchmark: in-process vs served ``POST /v1/screen`` on the same records.

Measures, on this machine, with the active ecg-rhythm model:
- in-process read + preprocess + infer per record (``OnnxModel.screen_files``): p50/p95;
- served, one client, sequential: p50/p95, and the ratio served p50 / in-process p50;
- served throughput with 8 concurrent clients for 30 s;
- training wall time and peak memory, read from a run folder's ``train.json`` if given.

Usage: ``python benchmarks/bench_ecg.py [--records 200] [--seconds 30] [--run runs/ecg-ship] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
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
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from prescreen.config import get_settings
from prescreen.models.onnx_model import OnnxModel
from prescreen.models.store import ModelStore


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_records(folder: Path, n: int) -> list[dict[str, bytes]]:
    names = [line.split(",")[0] for line in (folder / "REFERENCE.csv").read_text().splitlines() if line][:n]
    return [
        {f"{r}.hea": (folder / f"{r}.hea").read_bytes(), f"{r}.dat": (folder / f"{r}.dat").read_bytes()} for r in names
    ]


def in_process(model: OnnxModel, records: list[dict[str, bytes]]) -> list[float]:
    model.screen_files(records[0])  # warm-up
    times = []
    for files in records:
        start = time.perf_counter()
        model.screen_files(files)
        times.append((time.perf_counter() - start) * 1000)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prescreen.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
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


def served_sequential(base: str, records: list[dict[str, bytes]]) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as client:
        client.post(f"{base}/v1/screen", files=multipart(records[0]))
        for files in records:
            start = time.perf_counter()
            r = client.post(f"{base}/v1/screen", files=multipart(files))
            times.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
    return times


def served_concurrent(base: str, records: list[dict[str, bytes]], clients: int, seconds: float) -> tuple[int, int]:
    done = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = k
            while time.monotonic() < stop:
                r = client.post(f"{base}/v1/screen", files=multipart(records[i % len(records)]))
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


def measure_training(epochs: int) -> str:
    """Run ``prescreen train`` on the full CinC set for a few epochs; wall time and peak RSS."""
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
                "ecg-rhythm",
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
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return (
        f"- `prescreen train ecg-rhythm --epochs {epochs}` on the full set ({info['n_records']} records, cached "
        f"preprocessing): {wall:.0f} s wall including start-up, {info['train_seconds'] / epochs:.0f} s per epoch "
        f"(train + validation), peak RSS {peak:.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--run", type=Path, default=None, help="run folder whose train.json gives training time")
    ap.add_argument("--train-epochs", type=int, default=2, help="time a short full-data training run (0: skip)")
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section to this file")
    args = ap.parse_args()

    settings = get_settings()
    stored = ModelStore().active("ecg-rhythm")
    model = OnnxModel(stored.onnx_path, stored.card)
    records = load_records(settings.data_dir / "cinc2017", args.records)
    local = in_process(model, records)
    port = free_port()
    proc = start_server(port)
    base = f"http://127.0.0.1:{port}"
    try:
        served = served_sequential(base, records)
        ok, errors = served_concurrent(base, records, args.clients, args.seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    rows = {
        "in-process p50 ms": statistics.median(local),
        "in-process p95 ms": percentile(local, 95),
        "served p50 ms (1 client)": statistics.median(served),
        "served p95 ms (1 client)": percentile(served, 95),
        "served/in-process p50 ratio": statistics.median(served) / statistics.median(local),
        f"served throughput req/s ({args.clients} clients, {args.seconds:.0f} s)": ok / args.seconds,
        "errors under load": float(errors),
    }
    train_lines = []
    if args.train_epochs:
        train_lines.append(measure_training(args.train_epochs))
    if args.run and (args.run / "train.json").is_file():
        info = json.loads((args.run / "train.json").read_text())
        train_lines.append(
            f"- Training `{info['task']}` on {info['n_records']} records: {info['train_seconds'] / 60:.1f} min wall, "
            f"{info['epochs_run']} epochs (best {info['best_epoch']}), "
            + (f"peak RSS {info['peak_rss_mb']} MB" if "peak_rss_mb" in info else "peak RSS not recorded by that run")
            + f", {info.get('threads', 2)} threads"
        )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    text = [
        f"## ECG screening — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}. "
        f"Model {stored.tag}; {len(records)} CinC 2017 records (WFDB FLAC), same files in both paths.",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.2f} |" for k, v in rows.items()],
        "",
        *train_lines,
        "",
    ]
    print("\n".join(text))
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
