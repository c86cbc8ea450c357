"""ECG screening benchmark: in-process vs served ``POST /v1/screen`` on the same records.

Measures, on this machine, with the active ecg-rhythm model: in-process read + preprocess + infer
per record (``OnnxModel.screen_files``), p50/p95; served with one sequential client, p50/p95 and
the ratio to in-process; served throughput with 8 concurrent clients for 30 s; a short training
run on the full set (wall time per epoch, peak memory); a finished run's ``train.json`` if given.

Usage: ``python benchmarks/bench_ecg.py [--records 200] [--seconds 30] [--run runs/ecg-ship] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import compare_served, measure_training, run_summary, time_calls, write_section

from prescreen.config import get_settings
from prescreen.models.model_store import ModelStore
from prescreen.models.onnx_model import OnnxModel


def load_records(folder: Path, n: int) -> list[dict[str, bytes]]:
    names = [line.split(",")[0] for line in (folder / "REFERENCE.csv").read_text().splitlines() if line][:n]
    return [
        {f"{r}.hea": (folder / f"{r}.hea").read_bytes(), f"{r}.dat": (folder / f"{r}.dat").read_bytes()} for r in names
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--run", type=Path, default=None, help="run folder whose train.json gives training time")
    ap.add_argument("--train-epochs", type=int, default=2, help="time a short full-data training run (0: skip)")
    ap.add_argument("--out", type=Path, default=None, help="append a Markdown section to this file")
    args = ap.parse_args()

    stored = ModelStore().active("ecg-rhythm")
    model = OnnxModel(stored.onnx_path, stored.card)
    records = load_records(get_settings().data_dir / "cinc2017", args.records)
    local = time_calls(model.screen_files, records)
    rows = compare_served(local, records, args.clients, args.seconds, screen=model.screen_files)
    extra = [measure_training("ecg-rhythm", args.train_epochs)] if args.train_epochs else []
    intro = f"Model {stored.tag}; {len(records)} CinC 2017 records (WFDB FLAC), same files in both paths."
    write_section("ECG screening", intro, rows, extra + run_summary(args.run), args.out)


if __name__ == "__main__":
    main()
