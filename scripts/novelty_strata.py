"""Held-out test images of an image task's shipped model, grouped by how far each lies from the
nearest image the model trained or chose anything on (perceptual-hash distance, 64 bits;
``prescreen.training.groups.phash``), with the model's figures in each group.

A record split lets a test image sit beside a near-copy of a training image; a new site's images
sit farther away. If the figures fall with the distance, the test split flatters the model in the
way the acceptance set found. The split is cut again from the card's configuration (same data
digest, fractions and seed) and must give the card's test size.

Usage: ``python scripts/novelty_strata.py TASK [DATA_DIR]`` (run from the repository root).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from prescreen.config import get_settings
from prescreen.evaluation.metrics import wilson_interval
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.export import onnx_predictor
from prescreen.training.groups import phash
from prescreen.training.trainer import split_indices

BANDS = ((0, 4), (5, 8), (9, 11), (12, 64))


def rate(hits: int, n: int) -> str:
    if n == 0:
        return "—"
    low, high = wilson_interval(hits, n)
    return f"{hits / n:.3f} [{low:.3f}, {high:.3f}] ({hits}/{n})"


def main(task_name: str, data_dir: str | None) -> None:
    folder = Path("prescreen/shipped") / task_name
    card = ModelCard.load(folder / "card.json")
    task = get_task(task_name)
    config = card.training.get("config") or {}
    data_path = Path(data_dir or config.get("data") or card.training["data_path"])
    data = task.load_dataset(data_path, get_settings().cache_dir, False, "train")
    if data.digest != card.training["data_digest"]:
        raise SystemExit(f"the data in {data_path} is not the data the card was made on")
    cfg = RunConfig(
        task=task_name,
        data=data_path,
        out=Path("unused"),
        split_seed=config.get("split_seed", card.training.get("split_seed", 0)),
        val_fraction=config.get("val_fraction", 0.15),
        test_fraction=config.get("test_fraction", 0.15),
    )
    train_i, val_i, test_i = split_indices(cfg, data)
    if card.test is None or len(test_i) != card.test.n:
        raise SystemExit("the split cut again does not give the card's test part")
    hashes = np.stack([phash(np.asarray(s)[0]) for s in data.signals]).astype(np.int64)
    seen = np.concatenate([train_i, val_i])
    distance = hashes[test_i] @ (1 - hashes[seen]).T + (1 - hashes[test_i]) @ hashes[seen].T
    nearest = distance.min(axis=1)
    probs = onnx_predictor(task, folder / "model.onnx")([data.signals[i] for i in test_i])
    temperature = card.calibration.temperature if card.calibration else 1.0
    score = task.flag_scores(apply_temperature(probs, temperature))
    flagged = score >= card.operating_threshold
    truth = np.isin(data.labels[test_i], [task.classes.index(c) for c in task.classes if c not in task.normal_classes])
    print(f"{task_name}: {len(test_i)} held-out test images; nearest train/validation image by pHash bits")
    print("| distance (bits) | images | positives | accuracy | sensitivity | specificity | AUROC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for low, high in BANDS:
        m = (nearest >= low) & (nearest <= high)
        t, f = truth[m], flagged[m]
        auroc = f"{roc_auc_score(t, score[m]):.3f}" if 0 < t.sum() < len(t) else "—"
        print(
            f"| {low}–{high} | {int(m.sum())} | {int(t.sum())} | {rate(int((f == t).sum()), len(t))} | "
            f"{rate(int(f[t].sum()), int(t.sum()))} | {rate(int((~f[~t]).sum()), int((~t).sum()))} | {auroc} |"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
