"""Held-out test images of an image task's shipped model, grouped by how far each lies from the
nearest image the model trained or chose anything on (perceptual-hash distance, 64 bits), with the
model's figures in each group (``prescreen.evaluation.novelty``, as ``prescreen export`` now writes
into ``card.shift.novelty``). For a card exported before that, ``--write`` adds the table to it.

The split is cut again from the card's configuration (same data digest, fractions and seed) and
must give the card's test size.

Usage: ``python scripts/novelty_strata.py TASK [--data DIR] [--write]`` (from the repository root).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prescreen.config import get_settings
from prescreen.evaluation.evaluate import flag_truth
from prescreen.evaluation.novelty import novelty_table
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.export import onnx_predictor
from prescreen.training.groups import nearest_distance
from prescreen.training.trainer import split_indices


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
    if data.digest != card.training["data_digest"]:
        raise SystemExit(f"the data in {data_path} is not the data the card was made on")
    cfg = RunConfig(
        task=args.task,
        data=data_path,
        out=Path("unused"),
        split_seed=config.get("split_seed", card.training.get("split_seed", 0)),
        val_fraction=config.get("val_fraction", 0.15),
        test_fraction=config.get("test_fraction", 0.15),
    )
    _, _, test_i = split_indices(cfg, data)
    if card.test is None or len(test_i) != card.test.n:
        raise SystemExit("the split cut again does not give the card's test part")
    test = set(test_i.tolist())
    seen = [s for i, s in enumerate(data.signals) if i not in test]
    distance = nearest_distance([data.signals[i] for i in test_i], seen)
    probs = onnx_predictor(task, folder / "model.onnx")([data.signals[i] for i in test_i])
    temperature = card.calibration.temperature if card.calibration else 1.0
    score = task.flag_scores(apply_temperature(probs, temperature))
    rows = novelty_table(distance, flag_truth(task, data.labels[test_i]), score, card.operating_threshold)
    print(f"{args.task}: {len(test_i)} held-out test images; distance to the nearest of the {len(seen)} others")
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
            f"the held-out test part ({len(test_i)} images), balanced operating point; distance: pHash bits (of 64) "
            f"to the nearest of the {len(seen)} images outside it; added after export by scripts/novelty_strata.py"
        )
        card.save(folder / "card.json")


if __name__ == "__main__":
    main()
