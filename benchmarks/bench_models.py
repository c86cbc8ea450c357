"""Shipped models: size, training time, in-process latency and the card's headline figures.

For each model folder in ``prescreen/shipped/<task>/`` (``model.onnx`` + ``card.json``, loaded with
``OnnxModel.from_folder``, which checks the file's SHA-256 against the card):

- from the card: training time (``train_seconds``; ``train_seconds_total`` for an ensemble or a
  cross-validation, summed over its members), the number of members (``ensemble_of``), INT8
  quantization (FP32 size, share of decisions changed), both operating points (threshold,
  validation sensitivity with its Wilson lower bound and positives, specificity), the temperature
  and ECE before/after, validation and held-out test accuracy with their CIs, the validation scheme;
- the ONNX file's size in MB (10^6 bytes) against the 10 MB budget of a shipped model;
- measured here: in-process latency per study over ``--studies`` real studies of the task's data set
  (the bytes of the files in memory → ``OnnxModel.screen_files``: read + preprocess + infer;
  and the preprocessed signal → ``OnnxModel.screen_signal``: infer only), p50/p95, with ONNX Runtime
  on 1 intra-op thread and on the settings' default (``PRESCREEN_ONNX_THREADS``).

Appends a dated section to ``--out`` and replaces the "shipped model" rows of its "Current figures"
table (adds them the first time).

Usage: ``python benchmarks/bench_models.py [--studies 100] [--shipped DIR] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
from common import machine_line, percentile
from PIL import Image

from prescreen.config import get_settings
from prescreen.datasets.image_collections import IMAGE_SUFFIXES, find_npz
from prescreen.models.card import Evaluation, ModelCard, OperatingPointSpec
from prescreen.models.model_store import SHIPPED_DIR
from prescreen.models.onnx_model import OnnxModel, make_session
from prescreen.training.export import MAX_MODEL_BYTES

T = TypeVar("T")
Study = dict[str, bytes]

SECTION_TITLE = "Shipped models (make bench: bench_models.py)"
ROW_PREFIX = "| shipped model "
"""Rows of the "Current figures" table this benchmark owns: replaced on every run."""


# ---------------------------------------------------------------- pure parts (tested)


def pick(items: Sequence[T], n: int) -> list[T]:
    """``n`` items spread evenly over ``items`` (all of them when there are no more than ``n``)."""
    if n <= 0:
        return []
    if len(items) <= n:
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def training_time(card: ModelCard) -> tuple[float | None, str]:
    """Seconds of training from the card and the key they came from: ``train_seconds_total``
    (ensemble / cross-validation: the sum over its members and any nested models) before
    ``train_seconds``."""
    for key in ("train_seconds_total", "train_seconds"):
        if card.training.get(key) is not None:
            return float(card.training[key]), key
    return None, "not on the card"


def members(card: ModelCard) -> int:
    return int(card.training.get("ensemble_of", 1))


def training_cell(card: ModelCard) -> str:
    seconds, key = training_time(card)
    if seconds is None:
        return "not on the card"
    t = card.training
    n = members(card)
    if n > 1:
        folds = t.get("cross_validation_folds")
        how = f"{folds}-fold cross-validation" if folds else "ensemble"
        detail = f"sum over {n} members, {how}"
        if t.get("nested_models"):
            detail += f", and its {t['nested_models']} nested models that chose the operating points"
    else:
        parts = ["1 run"]
        if "epochs_run" in t:
            parts.append(f"{t['epochs_run']} epochs" + (f", best {t['best_epoch']}" if "best_epoch" in t else ""))
        threads = t.get("threads") or (t.get("config") or {}).get("threads")
        if threads:
            parts.append(f"{threads} threads")
        detail = ", ".join(parts)
    return f"{seconds / 60:.1f} min (`{key}`; {detail})"


def size_cell(size_bytes: int) -> str:
    ok = "≤ 10 MB" if size_bytes <= MAX_MODEL_BYTES else "**> 10 MB**"
    return f"{size_bytes / 1e6:.2f} ({ok})"


def quantized_cell(card: ModelCard) -> str:
    q = card.onnx.get("quantized")
    if not q:
        return "no (FP32)"
    fp32 = q.get("fp32_size_bytes")
    dis = q.get("decision_disagreement_vs_fp32")
    parts = [f"FP32 {fp32 / 1e6:.2f} MB" if fp32 else "FP32 size not recorded"]
    on = f" on {q['checked_on']}" if q.get("checked_on") else ""
    if dis is not None:
        parts.append(f"{dis:.1%} of decisions changed{on}")
    converted = q.get("decision_disagreement_vs_dynamic_int8")
    if converted is not None:  # rewritten from a dynamic INT8 file whose FP32 original is gone
        parts.append(f"{converted:.1%} of decisions changed{on} against the dynamic INT8 file it replaced")
        before = q.get("converted_from", {}).get("decision_disagreement_vs_fp32")
        if before is not None:
            parts.append(f"that file changed {before:.1%} against FP32")
    return "INT8 (" + "; ".join(parts) + ")"


def op_cell(spec: OperatingPointSpec | None) -> str:
    if spec is None:
        return "not on the card"
    sens = "—" if spec.sensitivity is None else f"{spec.sensitivity:.3f}"
    low = "" if spec.sensitivity_wilson_low is None else f" (Wilson ≥ {spec.sensitivity_wilson_low:.3f}"
    low += f", {spec.positives} pos.)" if low else f" ({spec.positives} pos.)"
    spec_ = "—" if spec.specificity is None else f"{spec.specificity:.3f}"
    return f"t {spec.threshold:.3f}: sens {sens}{low}, spec {spec_}"


def calibration_cell(card: ModelCard) -> str:
    c = card.calibration
    if c is None:
        return "none"

    def ece(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    return f"T {c.temperature:.3f}; ECE {ece(c.ece_before)} → {ece(c.ece_after)}"


def accuracy_cell(ev: Evaluation | None) -> str:
    if ev is None:
        return "not on the card"
    m = ev.metrics.get("accuracy")
    if m is None or m.value is None:
        return f"— (n={ev.n})"
    ci = f" [{m.ci_low:.3f}, {m.ci_high:.3f}]" if m.ci_low is not None and m.ci_high is not None else ""
    return f"{m.value:.3f}{ci} (n={ev.n}, {ev.split})"


def ms(times: Sequence[float]) -> str:
    """``p50 / p95`` in milliseconds."""
    if not times:
        return "—"
    return f"{statistics.median(times):.1f} / {percentile(list(times), 95):.1f}"


@dataclass
class Measured:
    """One shipped model: its card and file, and what this run measured."""

    folder: Path
    card: ModelCard
    size_bytes: int
    sha256: str
    studies: str = ""
    threads: list[int] = field(default_factory=list)
    full: dict[int, list[float]] = field(default_factory=dict)
    infer: dict[int, list[float]] = field(default_factory=dict)
    same_findings: bool = True


def model_rows(models: Sequence[Measured]) -> list[str]:
    """The section's two tables, one row per model each."""
    threads = sorted({t for m in models for t in m.threads})
    lat_heads = [f"read + preprocess + infer p50 / p95 ms, {t} thr." for t in threads]
    lat_heads += [f"infer only p50 / p95 ms, {t} thr." for t in threads]
    head = ["model", "ONNX MB", "INT8", "members", "training time (card)", *lat_heads, "studies timed"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |"]
    for m in models:
        cells = [
            f"{m.card.task} (`{m.sha256[:12]}`)",
            size_cell(m.size_bytes),
            quantized_cell(m.card),
            str(members(m.card)),
            training_cell(m.card),
            *[ms(m.full.get(t, [])) for t in threads],
            *[ms(m.infer.get(t, [])) for t in threads],
            m.studies,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | validation scheme | balanced point | safety point | calibration | validation accuracy "
        "| held-out test accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in models:
        c = m.card
        cells = [
            c.task,
            c.validation_scheme or "not recorded on the card",
            op_cell(c.operating_points.get("balanced")),
            op_cell(c.operating_points.get("safety")),
            calibration_cell(c),
            accuracy_cell(c.validation),
            accuracy_cell(c.test),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def current_rows(models: Sequence[Measured], when: str) -> list[str]:
    """This run's rows of the "Current figures" table (what | figure | goal | met? | measured)."""
    rows = []
    for m in models:
        seconds, key = training_time(m.card)
        train = "training time not on the card" if seconds is None else f"{seconds / 60:.1f} min (`{key}`)"
        lat = ", ".join(f"{ms(m.full.get(t, []))} ms at {t} thr." for t in m.threads)
        int8 = " INT8" if m.card.onnx.get("quantized") else ""
        met = "yes" if m.size_bytes <= MAX_MODEL_BYTES else "**no**"
        rows.append(
            f"{ROW_PREFIX}{m.card.task}: ONNX size; training time; in-process read + preprocess + infer p50 / p95 "
            f"| {m.size_bytes / 1e6:.2f} MB{int8}; {train}; {lat} | size ≤ 10 MB | {met} | {when} |"
        )
    return rows


def update_current_figures(text: str, rows: Sequence[str]) -> str:
    """Replace the rows starting with ``ROW_PREFIX`` in the "Current figures" table by ``rows``
    (where the first old one stood; at the end of the table when there were none).

    Raises:
        ValueError: the text has no "## Current figures" section with a table.
    """
    lines = text.split("\n")
    try:
        start = lines.index("## Current figures")
    except ValueError:
        raise ValueError("no '## Current figures' section") from None
    first = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("|")), None)
    nxt = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    if first is None or first > nxt:
        raise ValueError("the '## Current figures' section has no table")
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    table = lines[first:end]
    old = [i for i, line in enumerate(table) if line.startswith(ROW_PREFIX)]
    kept = [line for line in table if not line.startswith(ROW_PREFIX)]
    at = old[0] if old else len(kept)
    return "\n".join([*lines[:first], *kept[:at], *rows, *kept[at:], *lines[end:]])


# ---------------------------------------------------------------- measurement glue


def record_files(folder: Path, record: str) -> Study:
    """A WFDB record as an upload sends it: its header and its signal file."""
    return {f"{record}{ext}": (folder / f"{record}{ext}").read_bytes() for ext in (".hea", ".dat")}


def wfdb_studies(folder: Path, n: int) -> tuple[list[Study], str]:
    names = [line.split(",")[0] for line in (folder / "REFERENCE.csv").read_text().splitlines() if line.strip()]
    chosen = pick(names, n)
    studies = [record_files(folder, r) for r in chosen]
    return (
        studies,
        f"{len(studies)} CinC 2017 WFDB records (`.hea` + `.dat`), spread evenly over the {len(names)} "
        "of REFERENCE.csv",
    )


LONG_RECORD_STUDIES = 3
"""Long (Holter) records timed per model: one 30-min MIT-BIH record takes seconds to screen, and
``bench_holter.py`` times a 24-hour one."""


def long_record_studies(folder: Path, n: int) -> tuple[list[Study], str]:
    """At most ``LONG_RECORD_STUDIES`` WFDB records (``.hea`` + ``.dat``) of a folder without a
    REFERENCE.csv (MIT-BIH), spread over its records."""
    names = sorted(p.stem for p in folder.glob("*.hea") if (folder / f"{p.stem}.dat").is_file())
    chosen = pick(names, min(n, LONG_RECORD_STUDIES))
    studies = [record_files(folder, r) for r in chosen]
    return studies, f"{len(studies)} of the {len(names)} WFDB records of `{folder.name}/` ({', '.join(chosen)})"


def npz_studies(npz: Path, n: int) -> tuple[list[Study], str]:
    with np.load(npz) as z:
        prefix = "test" if "test_images" in z.files else "val"
        images = z[f"{prefix}_images"]
    chosen = pick(list(range(len(images))), n)
    studies = []
    for i in chosen:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(images[i], dtype=np.uint8)).save(buf, format="PNG")
        studies.append({f"{prefix}-{i}.png": buf.getvalue()})
    h, w = images.shape[1:3]
    return studies, (
        f"{len(studies)} `{prefix}_*` images of {npz.name} ({w}×{h}), written as PNG in memory before timing"
    )


def folder_studies(folder: Path, n: int) -> tuple[list[Study], str]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem)
    chosen = pick(files, n)
    return [{p.name: p.read_bytes()} for p in chosen], (
        f"{len(chosen)} of the {len(files)} images of `{folder.name}/`, spread over its class folders"
    )


def load_studies(data: Path, n: int) -> tuple[list[Study], str]:
    """``n`` real studies of a data set, as the files a client would send."""
    if (data / "REFERENCE.csv").is_file():
        return wfdb_studies(data, n)
    if any(data.glob("*.hea")):
        return long_record_studies(data, n)
    npz = find_npz(data)
    if npz is not None:
        return npz_studies(npz, n)
    return folder_studies(data, n)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Milliseconds one call of ``fn`` took, and its result."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def measure(folder: Path, n: int) -> Measured:
    model = OnnxModel.from_folder(folder)  # checks the file's SHA-256 against the card
    card = model.card
    m = Measured(folder, card, model.path.stat().st_size, str(card.onnx.get("sha256", "")))
    studies, m.studies = load_studies(get_settings().data_dir / model.task.default_data, n)
    whole_record = model.task.analyse is not None  # holter: no separate preprocess/infer step to time
    signals = [None if whole_record else model.task.preprocess(model.task.read_files(s)) for s in studies]
    default = get_settings().onnx_threads
    sessions = {1: make_session(model.path, threads=1), default: model.session}
    m.threads = sorted(sessions)
    m.full = {t: [] for t in m.threads}
    m.infer = {t: [] for t in m.threads}
    scores: dict[int, list[float]] = {t: [] for t in m.threads}
    for session in sessions.values():  # warm-up
        model.session = session
        model.screen_files(studies[0])
    for i, (files, x) in enumerate(zip(studies, signals, strict=True)):
        for t in m.threads if i % 2 == 0 else m.threads[::-1]:  # alternate which goes first
            model.session = sessions[t]
            took, finding = timed(partial(model.screen_files, files))
            m.full[t].append(took)
            if x is not None:
                took, finding = timed(partial(model.screen_signal, x))
                m.infer[t].append(took)
            scores[t].append(finding.score)
    m.same_findings = all(np.allclose(scores[t], scores[m.threads[0]], atol=1e-5) for t in m.threads)
    return m


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def section(models: Sequence[Measured], when: str, wall: float, load: tuple[float, float], shipped: Path) -> str:
    default = get_settings().onnx_threads
    text = [
        f"## {SECTION_TITLE} — {when} UTC",
        "",
        f"{machine_line()} Each model folder of `{shown(shipped)}/` (`model.onnx` + `card.json`, loaded with "
        "`OnnxModel.from_folder`, SHA-256 checked against the card); load average "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end (other work shared the 2 cores).",
        "",
        *model_rows(models),
        "",
        "- Measured in this run: in-process latency per study. *read + preprocess + infer* = "
        "`OnnxModel.screen_files` on the files' bytes already in memory (no disk read, no HTTP): decode, the "
        "task's preprocessing, ONNX Runtime over every window/frame, temperature, the finding. *infer only* = "
        "`OnnxModel.screen_signal` on the already preprocessed signal (none for holter, which analyses whole "
        "records). p50 / p95 over the studies, one warm-up "
        "call per setting; per study both thread settings run, alternating which goes first.",
        f"- Threads: ONNX Runtime intra-op threads 1 vs the settings' default {default} (`PRESCREEN_ONNX_THREADS`; "
        "inter-op 1, no spinning, as in serving); numpy/scipy preprocessing is the same in both. Same scores at "
        "both settings: " + ", ".join(f"{m.card.task} {'yes' if m.same_findings else '**no**'}" for m in models) + ".",
        *[f"- Studies, {m.card.task}: {m.studies}." for m in models],
        "- From the card, not measured here: size budget 10 MB = 10^7 bytes (`MAX_MODEL_BYTES`); training time "
        "(`train_seconds` of the one run, or `train_seconds_total` summed over an ensemble's members and any "
        "nested models), wall time "
        "on this 2-core CPU as recorded by `prescreen train`; operating points chosen on the validation data "
        "named in the card (sensitivity's 95 % Wilson lower bound, positives it rests on); temperature and ECE "
        "fitted there; accuracy at the balanced point with the card's 95 % bootstrap CI.",
        "- Served / in-process ratios are measured by `bench_ecg.py` and `bench_imaging.py` (they need the "
        "shipped runs' folders), not here.",
        f"- Whole benchmark: {wall:.0f} s (the process, start-up included).",
        "",
    ]
    return "\n".join(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--studies", type=int, default=100, help="real studies timed per model")
    ap.add_argument("--shipped", type=Path, default=SHIPPED_DIR, help="folder of <task>/ model folders")
    ap.add_argument("--out", type=Path, default=None, help="append a section and update Current figures here")
    args = ap.parse_args()

    load0 = os.getloadavg()[0]
    folders = sorted(p for p in args.shipped.iterdir() if (p / "card.json").is_file() and (p / "model.onnx").is_file())
    if not folders:
        raise SystemExit(f"no model folders (model.onnx + card.json) in {args.shipped}")
    models = [measure(f, args.studies) for f in folders]
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    wall = time.time() - psutil.Process().create_time()  # the whole process, imports included
    text = section(models, when, wall, (load0, os.getloadavg()[0]), args.shipped)
    print(text)
    rows = current_rows(models, when)
    print("\n".join(rows))
    if args.out:
        doc = update_current_figures(args.out.read_text(), rows)
        args.out.write_text(doc.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
