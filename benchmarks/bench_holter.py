"""Ambulatory-ECG (Holter) benchmark: time and peak memory to screen a 30-minute MIT-BIH record and a
synthetic 24-hour record, each in a fresh process, through the screening engine as the service runs it
(files in memory as an upload would be → routing by length → holter → the finding with its summary).

The 24-hour record is MIT-BIH record ``--record`` (30 min, 2 leads, 360 Hz, format 212) repeated 48
times into one WFDB record (31 M samples per lead, 93 MB of signal). Its beats and events repeat, so
the figures are of speed and memory, not of accuracy. Peak memory is the child process's maximum
resident set (``ru_maxrss``); it includes the Python runtime, ONNX Runtime, the model and the upload's
bytes. Goal: a 24-hour 2-lead record at 360 Hz within 500 MB.

Usage: ``python benchmarks/bench_holter.py [--record 101] [--hours 24] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import wfdb
from common import lab_env, write_section

DATA = Path(os.environ.get("PRESCREEN_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CHILD = """
import json, resource, sys, time
from pathlib import Path
from prescreen.models.model_store import ModelStore
from prescreen.pipeline.engine import ScreeningEngine
folder, name = Path(sys.argv[1]), sys.argv[2]
engine = ScreeningEngine(ModelStore())
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
files = {p.name: p.read_bytes() for p in folder.glob(name + ".*") if p.suffix in (".hea", ".dat")}
start = time.perf_counter()
finding = engine.screen(files)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = finding.summary or {}
print(json.dumps({"task": finding.task, "seconds": seconds, "peak_kb": peak, "loaded_kb": loaded,
                  "beats": sum(summary.get("beats", {}).values()), "events": summary.get("events_total", 0),
                  "duration_s": summary.get("duration_s", 0.0), "flagged": finding.flagged}))
"""


def tiled_record(source: Path, times: int, folder: Path) -> str:
    """Write ``source`` repeated ``times`` times as one WFDB record in ``folder``; its name."""
    rec = wfdb.rdrecord(str(source), physical=False)
    digital = np.tile(rec.d_signal.astype(np.int16), (times, 1))
    name = f"{source.name}x{times}"
    wfdb.wrsamp(
        name,
        fs=rec.fs,
        units=rec.units,
        sig_name=rec.sig_name,
        d_signal=digital,
        fmt=rec.fmt,
        adc_gain=rec.adc_gain,
        baseline=rec.baseline,
        write_dir=str(folder),
    )
    return name


def screen_in_child(folder: Path, name: str, home: Path) -> dict[str, float]:
    env = lab_env({**os.environ, "PRESCREEN_HOME": str(home), "PRESCREEN_LOG_LEVEL": "WARNING"})
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), name], capture_output=True, text=True, env=env, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"screening {name} failed: {done.stderr[-800:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["task"] != "holter":
        raise SystemExit(f"{name} was routed to {result['task']}, not holter")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", default="101")
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    source = DATA / "mitdb" / args.record
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        short = screen_in_child(source.parent, args.record, root / "home-short")
        times = max(1, round(args.hours * 2))
        name = tiled_record(source, times, root)
        long = screen_in_child(root, name, root / "home-long")
    rows = {
        f"30-min record {args.record}: seconds to screen": short["seconds"],
        f"30-min record {args.record}: peak memory (MB)": short["peak_kb"] / 1024,
        f"30-min record {args.record}: beats classified": short["beats"],
        f"{args.hours}-hour record: seconds to screen": long["seconds"],
        f"{args.hours}-hour record: peak memory (MB)": long["peak_kb"] / 1024,
        f"{args.hours}-hour record: beats classified": long["beats"],
        "memory of the process with the models loaded, before screening (MB)": long["loaded_kb"] / 1024,
        f"{args.hours}-hour record: added by reading and analysing it (MB)": (long["peak_kb"] - long["loaded_kb"])
        / 1024,
        f"{args.hours}-hour record: screening speed (x real time)": long["duration_s"] / long["seconds"],
    }
    extra = [
        f"- The {args.hours}-hour record is MIT-BIH {args.record} repeated {times} times (2 leads, 360 Hz, "
        "format 212); the 30-minute one is the record itself. Each is screened in a fresh process by "
        "`ScreeningEngine.screen` from its files in memory, as an upload is; peak memory is that process's "
        "maximum resident set, Python, ONNX Runtime, every active model and the upload's bytes included.",
        "- Goal: a 24-hour 2-lead 360 Hz record within 500 MB; "
        + ("met." if long["peak_kb"] / 1024 <= 500 else "NOT met as a whole process")
        + f" (the record itself adds {(long['peak_kb'] - long['loaded_kb']) / 1024:.0f} MB, its upload's bytes "
        "included; the rest is the process with all four tasks' models, ONNX Runtime and the libraries).",
    ]
    write_section("Holter: time and memory to screen long records", "One run.", rows, extra, args.out)


if __name__ == "__main__":
    sys.exit(main())
