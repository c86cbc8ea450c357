"""Held-out test images of an image task's shipped model, grouped by how far each lies from the
nearest image the model trained or chose anything on (perceptual-hash distance, 64 bits), with the
model's figures in each group (``prescreen.evaluation.novelty``, as ``prescreen export`` now writes
into ``card.shift.novelty``). For a card exported before that, ``--write`` adds the table to it.

The split is cut again from the card's configuration (``rebuild_split``: same data digest, limit,
fractions, grouping and seed) and must give the card's test size.

Usage: ``python scripts/novelty_strata.py TASK [--data DIR] [--write]`` (from the repository root).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from prescreen.config import get_settings
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.task import get_task
from prescreen.training.characterize import rebuild_split
from prescreen.training.export import novelty_of_test_part, onnx_predictor


def rate(cell: dict[str, float | int | None]) -> str:
    if not cell["n"]:
        return "—"
    return f"{cell['value']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}] (n {cell['n']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--write", action="store_true", help="add the table to the shipped card")
    args = parser.parse_args()
    folder = Path("prescreen/shipped") / args.task
    card = ModelCard.load(folder / "card.json")
    task = get_task(args.task)
    config = card.training.get("config") or {}
    data_path = args.data or Path(config.get("data") or card.training["data_path"])
    data = task.load_dataset(data_path, get_settings().cache_dir, False, "train")
    _, _, test = rebuild_split(card, data)  # the card's own split, cut again; refuses other data
    if card.test is None or len(test) != card.test.n:
        raise SystemExit("the split cut again does not give the card's test part")
    probs = onnx_predictor(task, folder / "model.onnx")(test.signals)
    temperature = card.calibration.temperature if card.calibration else 1.0
    entries = novelty_of_test_part(
        task, data, np.asarray(test.ids), test.labels, apply_temperature(probs, temperature), card.operating_threshold
    )
    rows = entries["novelty"]
    print(f"{args.task}: {entries['novelty_measured_on']}")
    print("| distance (bits) | images | positives | accuracy | sensitivity | specificity | AUROC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        auroc = f"{r['auroc']:.3f}" if r["auroc"] is not None else "—"
        print(
            f"| {r['distance_bits']} | {r['records']} | {r['positives']} | {rate(r['accuracy'])} | "  # type: ignore[arg-type]
            f"{rate(r['sensitivity'])} | {rate(r['specificity'])} | {auroc} |"  # type: ignore[arg-type]
        )
    if args.write:
        card.shift["novelty"] = rows
        card.shift["novelty_measured_on"] = (
            entries["novelty_measured_on"] + "; added after export by scripts/novelty_strata.py"
        )
        card.save(folder / "card.json")


if __name__ == "__main__":
    main()
