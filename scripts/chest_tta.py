"""Test-time augmentation for the shipped chest-xray model, an ablation: horizontal flip, and flip
plus four 2-pixel shifts, averaged with the plain input's probabilities. For each variant the
temperature and balanced threshold are chosen again on the validation split (the card's split,
cut again from its seed) and the figures measured on the held-out test split, on its test films
9 or more pHash bits from every training/validation film, and on the 524 official ``val_*`` films.

Usage: ``python scripts/chest_tta.py`` (run from the repository root; data in PRESCREEN_DATA_DIR).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score

from prescreen.config import get_settings
from prescreen.evaluation.operating import characterize
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import make_session
from prescreen.models.task import get_task
from prescreen.training.characterize import rebuild_split
from prescreen.training.groups import nearest_distance

Batch = npt.NDArray[np.float32]


def shifted(x: Batch, dx: int, dy: int) -> Batch:
    return np.roll(np.roll(x, dx, axis=3), dy, axis=2)


VARIANTS: dict[str, Callable[[Batch], list[Batch]]] = {
    "none": lambda x: [x],
    "horizontal flip": lambda x: [x, x[..., ::-1].copy()],
    "flip and 2 px shifts": lambda x: [
        x,
        x[..., ::-1].copy(),
        *(shifted(x, dx, dy) for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2))),
    ],
}


def main() -> None:
    task = get_task("chest-xray")
    path = get_settings().data_dir / "pneumoniamnist"
    data = task.load_dataset(path, get_settings().cache_dir, False, "train")
    official_val = task.load_dataset(path, get_settings().cache_dir, False, "eval")  # val_*: no test_* here
    card = ModelCard.load(Path("prescreen/shipped/chest-xray/card.json"))
    train, val, test = rebuild_split(card, data)  # the card's own split, cut again
    session = make_session(Path("prescreen/shipped/chest-xray/model.onnx"), 2)

    def probs(x: Batch) -> Batch:
        return np.concatenate(
            [session.run(["probabilities"], {"signal": x[i : i + 256]})[0] for i in range(0, len(x), 256)]
        )

    def batch(signals: list[Batch]) -> Batch:
        return np.stack([s[0] for s in signals])[:, None].astype(np.float32)

    far = nearest_distance(test.signals, train.signals + val.signals) >= 9
    sets = {
        "validation split": (batch(val.signals), val.labels, None),
        "test split": (batch(test.signals), test.labels, None),
        "test, ≥ 9 bits": (batch(test.signals), test.labels, far),
        "official val_*": (batch(official_val.signals), official_val.labels, None),
    }
    print("| variant | T; threshold | set | accuracy | sensitivity | specificity | AUROC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, views in VARIANTS.items():
        scored = {
            k: (np.mean([probs(v) for v in views(x)], axis=0).astype(np.float32), y, m) for k, (x, y, m) in sets.items()
        }
        val_probs, val_labels, _ = scored["validation split"]
        found = characterize(task, val_labels, val_probs, "validation split")
        temperature, threshold = found.calibration.temperature, found.operating_points["balanced"].threshold
        for label, (p, y, mask) in scored.items():
            if label == "validation split":
                continue
            score = task.flag_scores(apply_temperature(p, temperature))
            truth = y == 1
            if mask is not None:
                score, truth = score[mask], truth[mask]
            flag = score >= threshold
            print(
                f"| {name} | {temperature:.3f}; {threshold:.3f} | {label} | {np.mean(flag == truth):.3f} | "
                f"{flag[truth].mean():.3f} | {(~flag[~truth]).mean():.3f} ({int((~flag[~truth]).sum())}/"
                f"{int((~truth).sum())}) | {roc_auc_score(truth, score):.4f} |"
            )


if __name__ == "__main__":
    main()
