"""The training loop: class-weighted cross-entropy, augmentation, early stopping, checkpoints.

A run folder holds ``run.json`` (the config), ``checkpoint.pt`` (best weights by validation
flag AUROC, or the last epoch's with ``checkpoint: last``), ``history.json`` and
``predictions.npz`` (validation and test class probabilities), from which ``prescreen export``
chooses the threshold and writes the model card.
"""

from __future__ import annotations

import json
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.metrics import roc_auc_score
from torch import nn

from prescreen.datasets.collections import LabelledSet
from prescreen.errors import DatasetError
from prescreen.models.task import Task
from prescreen.training.config import RunConfig
from prescreen.training.groups import near_duplicate_groups, record_groups
from prescreen.training.split import grouped_split, stratified_split

FloatArray = npt.NDArray[np.float32]


def seed_everything(seed: int, threads: int) -> None:
    """Make a run reproducible: same seed and thread count → same weights and metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def predict_probs(task: Task, net: nn.Module, signals: list[FloatArray], batch: int = 128) -> FloatArray:
    """Class probabilities per signal: windows through the network, averaged per signal."""
    net.eval()

    def softmax(windows: FloatArray) -> FloatArray:
        with torch.inference_mode():
            out: FloatArray = torch.softmax(net(torch.from_numpy(windows)), dim=1).numpy()
        return out

    return task.predict_by_windows(signals, softmax, batch)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_auroc: float
    epochs_run: int
    seconds: float
    kept_epoch: int
    kept_val_auroc: float


class Trainer:
    """Trains ``task``'s network on a labelled set according to ``config``."""

    def __init__(self, task: Task, config: RunConfig, progress: bool = True) -> None:
        self.task = task
        self.config = config
        self.progress = progress

    def fit(self, data: LabelledSet) -> TrainResult:
        cfg = self.config
        seed_everything(cfg.seed, cfg.threads)
        out = cfg.out
        out.mkdir(parents=True, exist_ok=True)
        if cfg.limit is not None and cfg.limit < len(data):
            rng0 = np.random.default_rng(cfg.split_seed)
            data = data.subset(np.sort(rng0.permutation(len(data))[: cfg.limit]))
        train_i, val_i, test_i = split_indices(cfg, data)
        train, val, test = data.subset(train_i), data.subset(val_i), data.subset(test_i)
        _check_validation(self.task, val.labels)
        for stale in ("train.json", "predictions.npz"):  # a finished run is one whose files match run.json
            (out / stale).unlink(missing_ok=True)
        (out / "run.json").write_text(cfg.model_dump_json(indent=2))
        net = self.task.build_network()
        counts = np.bincount(train.labels, minlength=len(self.task.classes)).astype(np.float64)
        weights = 1.0 / np.sqrt(np.maximum(counts, 1.0))
        weights = weights / weights.mean()
        loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32), label_smoothing=0.05)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, int(np.ceil(len(train) / cfg.batch_size)))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
        )
        rng = np.random.default_rng(cfg.seed)
        history: list[dict[str, Any]] = []
        best = (-1.0, 0)
        start = time.monotonic()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not self.progress) as bar:
            job = bar.add_task("epoch 1", total=cfg.epochs * steps_per_epoch)
            for epoch in range(1, cfg.epochs + 1):
                net.train()
                order = rng.permutation(len(train))
                total = 0.0
                for s in range(steps_per_epoch):
                    batch = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                    if len(batch) < 2:
                        bar.advance(job)
                        continue
                    x = np.stack([self.task.train_view(train.signals[i], rng) for i in batch])
                    y = torch.from_numpy(train.labels[batch])
                    loss = loss_fn(net(torch.from_numpy(x)), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(batch)
                    bar.advance(job)
                val_probs = predict_probs(self.task, net, val.signals)
                auroc = _flag_auroc(self.task, val.labels, val_probs)
                history.append({"epoch": epoch, "train_loss": total / len(train), "val_flag_auroc": auroc})
                if auroc > best[0]:
                    best = (auroc, epoch)
                    if cfg.checkpoint == "best":
                        torch.save(net.state_dict(), out / "checkpoint.pt")
                bar.update(
                    job,
                    description=f"epoch {epoch} loss {total / len(train):.3f} val AUROC {auroc:.3f} "
                    f"(best {best[0]:.3f}@{best[1]})",
                )
                (out / "history.json").write_text(json.dumps(history, indent=1))
                if cfg.checkpoint == "best" and epoch - best[1] >= cfg.patience:
                    break
        if cfg.checkpoint == "last":
            torch.save(net.state_dict(), out / "checkpoint.pt")
        kept_epoch = len(history) if cfg.checkpoint == "last" else best[1]
        kept_auroc = float(history[kept_epoch - 1]["val_flag_auroc"])
        net.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True))
        np.savez(
            out / "predictions.npz",
            val_ids=np.asarray(val.ids),
            val_labels=val.labels,
            val_probs=predict_probs(self.task, net, val.signals),
            test_ids=np.asarray(test.ids),
            test_labels=test.labels,
            test_probs=predict_probs(self.task, net, test.signals)
            if len(test)
            else np.zeros((0, len(self.task.classes)), np.float32),
        )
        seconds = time.monotonic() - start
        meta = {
            "task": self.task.name,
            "data_path": str(data.path),
            "data_digest": data.digest,
            "n_records": len(data),
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test),
            "best_epoch": best[1],
            "best_val_flag_auroc": best[0],
            "checkpoint": cfg.checkpoint,
            "kept_epoch": kept_epoch,
            "kept_val_flag_auroc": kept_auroc,
            "epochs_run": len(history),
            "train_seconds": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": cfg.threads,
        }
        (out / "train.json").write_text(json.dumps(meta, indent=2))
        return TrainResult(out, best[1], best[0], len(history), seconds, kept_epoch, kept_auroc)


def split_indices(
    cfg: RunConfig, data: LabelledSet
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train / validation / test indices of a run: the plain stratified record split, or (with
    ``group_by: phash`` or ``folds``) a stratified group split where no near-duplicate group
    straddles two parts, validating on fold ``cfg.fold`` of ``cfg.folds``."""
    if cfg.group_by == "record" and not cfg.folds:
        return stratified_split(data.labels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    groups = near_duplicate_groups(data.signals) if cfg.group_by == "phash" else record_groups(len(data))
    folds = cfg.folds or max(2, round((1 - cfg.test_fraction) / cfg.val_fraction))
    return grouped_split(data.labels, groups, cfg.test_fraction, folds, cfg.fold or 0, cfg.split_seed, cfg.second_fold)


def _check_validation(task: Task, labels: npt.NDArray[np.int64]) -> None:
    """The validation split chooses the checkpoint (by flag AUROC) and the threshold: it needs at
    least one flagged and one normal record.

    Raises:
        DatasetError: one side is missing (too small a set or ``--limit``, or a rare class).
    """
    flagged = ~np.isin(labels, task.normal_index)
    if len(labels) == 0 or flagged.all() or not flagged.any():
        side = "normal" if len(labels) and flagged.all() else "flagged"
        raise DatasetError(
            f"the validation split ({len(labels)} records) holds no {side} record, so no checkpoint or threshold "
            "can be chosen; use more data (a larger --limit) or another --split-seed"
        )


def _flag_auroc(task: Task, labels: npt.NDArray[np.int64], probs: FloatArray) -> float:
    flagged = ~np.isin(labels, task.normal_index)
    if flagged.all() or not flagged.any():
        return float("nan")
    return float(roc_auc_score(flagged, task.flag_scores(probs)))
