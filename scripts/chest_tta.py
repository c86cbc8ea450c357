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
from prescreen.models.onnx_model import make_session
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.groups import phash
from prescreen.training.trainer import split_indices

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
    train_i, val_i, test_i = split_indices(RunConfig(task="chest-xray", data=path, out=Path("unused")), data)
    session = make_session(Path("prescreen/shipped/chest-xray/model.onnx"), 2)

    def probs(x: Batch) -> Batch:
        return np.concatenate(
            [session.run(["probabilities"], {"signal": x[i : i + 256]})[0] for i in range(0, len(x), 256)]
        )

    def batch(index: np.ndarray, signals: list[Batch]) -> Batch:
        return np.stack([signals[i][0] for i in index])[:, None].astype(np.float32)

    hashes = np.stack([phash(np.asarray(s)[0]) for s in data.signals]).astype(np.int64)
    seen = np.concatenate([train_i, val_i])
    far = (hashes[test_i] @ (1 - hashes[seen]).T + (1 - hashes[test_i]) @ hashes[seen].T).min(axis=1) >= 9
    sets = {
        "validation split": (batch(val_i, data.signals), data.labels[val_i], None),
        "test split": (batch(test_i, data.signals), data.labels[test_i], None),
        "test, ≥ 9 bits": (batch(test_i, data.signals), data.labels[test_i], far),
        "official val_*": (batch(np.arange(len(official_val.labels)), official_val.signals), official_val.labels, None),
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
