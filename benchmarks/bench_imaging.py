"""Imaging benchmark: decode per transfer syntax, preprocess, infer; in-process vs served.

For each image task with an active model: per-image p50 of decode, preprocess and inference on
the sample DICOM files of that modality (decode reported per transfer syntax); in-process vs
served ``POST /v1/screen`` for the same files (p50/p95, ratio); throughput with 8 clients;
a short training run on the task's full data set.

Usage: ``python benchmarks/bench_imaging.py [--seconds 30] [--train-epochs 2] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pydicom
from common import compare_served, measure_training, run_summary, time_calls, write_section

from prescreen.config import get_settings
from prescreen.datasets.images import read_dicom_image
from prescreen.models.model_store import ModelStore
from prescreen.models.onnx_model import OnnxModel

SAMPLES = {
    "breast-us": [
        "US1_UNCR.dcm",
        "US1_J2KR.dcm",
        "US1_J2KI.dcm",
        "OBXXXX1A.dcm",
        "OBXXXX1A_rle.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "gdcm-US-ALOKA-16.dcm",
    ],
    "chest-xray": ["cr_chest_rsna_sample.dcm", "RG1_J2KI.dcm"],
}


def median_ms(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def stage_rows(model: OnnxModel, folder: Path, names: list[str], repeat: int) -> dict[str, float]:
    rows: dict[str, float] = {}
    max_pixels = get_settings().max_image_pixels
    for name in names:
        data = (folder / name).read_bytes()
        syntax = pydicom.dcmread(folder / name, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        rows[f"decode {name} ({syntax}) p50 ms"] = median_ms(lambda d=data: read_dicom_image(d, max_pixels), repeat)
    study = read_dicom_image((folder / names[0]).read_bytes(), max_pixels)
    x = model.task.preprocess(study)
    rows[f"preprocess {names[0]} p50 ms"] = median_ms(lambda: model.task.preprocess(study), repeat)
    rows[f"infer {names[0]} p50 ms"] = median_ms(lambda: model.screen_signal(x), repeat)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--train-epochs", type=int, default=2, help="time a short full-data training run (0: skip)")
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="finished run folders to summarise")
    ap.add_argument("--out", type=Path, default=None, help="append Markdown sections to this file")
    args = ap.parse_args()

    folder = get_settings().data_dir / "dicom"
    store = ModelStore()
    for task, names in SAMPLES.items():
        stored = store.active(task)
        model = OnnxModel(stored.onnx_path, stored.card)
        rows = stage_rows(model, folder, names, args.repeat)
        records = [{names[0]: (folder / names[0]).read_bytes()}] * args.repeat
        local = time_calls(model.screen_files, records)
        rows.update(compare_served(local, records, args.clients, args.seconds, screen=model.screen_files))
        extra = [measure_training(task, args.train_epochs)] if args.train_epochs else []
        extra += [line for run in args.runs for line in run_summary(run) if f"`{task}`" in line]
        intro = f"Model {stored.tag}; served and in-process rows screen `{names[0]}` (read + preprocess + infer)."
        write_section(f"Imaging: {task}", intro, rows, extra, args.out)


if __name__ == "__main__":
    main()
