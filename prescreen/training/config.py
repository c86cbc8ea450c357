"""The typed configuration of one training run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class RunConfig(BaseModel):
    """What ``prescreen train`` was asked to do; stored as ``run.json`` in the run folder."""

    task: str
    data: Path
    out: Path
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    patience: int = Field(8, ge=1)
    seed: int = Field(0, description="seed of initialisation, batch order and augmentation")
    split_seed: int = Field(0, description="seed of the train/validation/test split (share it across ensemble members)")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, ge=0, lt=0.5)
    limit: int | None = Field(None, ge=8, description="use only this many records (smoke runs)")
    threads: int = Field(2, ge=1)
    group_by: Literal["record", "phash"] = Field(
        "record", description="unit of the splits: the record, or groups of near-identical images (pHash)"
    )
    folds: int = Field(0, ge=0, description="k of a k-fold cross-validation over the training side (0: one split)")
    fold: int | None = Field(None, ge=0, description="which fold this run validates on (cross-validation runs)")
    second_fold: int | None = Field(
        None,
        ge=0,
        description="a nested cross-validation's run also holds out this fold: it trains on the other k-2 folds",
    )
    checkpoint: Literal["best", "last"] = Field(
        "best",
        description="weights kept: the epoch with the best validation AUROC, or the last epoch of the schedule "
        "(the validation part then chooses nothing but the thresholds, so out-of-fold figures are not flattered "
        "by picking an epoch on them)",
    )
