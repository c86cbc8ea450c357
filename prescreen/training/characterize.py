"""Give an exported model what a release needs — calibration, both operating points, the score
reference and the shift tables — measured on its own validation records.

For a model exported before operating points existed (the first shipped cards), the validation
split is rebuilt from the card's training configuration (same data digest, limit, fractions and
split seed), so nothing the model trained on or was tested on is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prescreen.config import get_settings
from prescreen.datasets.collections import LabelledSet
from prescreen.errors import ModelError
from prescreen.evaluation.evaluate import evaluate_probs
from prescreen.evaluation.operating import Characterization, characterize
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import FloatArray, OnnxModel
from prescreen.models.task import Task, get_task
from prescreen.training.config import RunConfig
from prescreen.training.trainer import split_indices


def _run_config(card: ModelCard, data: Path | None = None) -> RunConfig:
    config = card.training.get("config")
    if not isinstance(config, dict):
        raise ModelError(f"card {card.name}:{card.version} has no training configuration to rebuild its split from")
    return RunConfig.model_validate({**config, **({"data": data} if data is not None else {})})


def rebuild_split(card: ModelCard, dataset: LabelledSet) -> tuple[LabelledSet, LabelledSet, LabelledSet]:
    """The model's train, validation and held-out test records within ``dataset`` (its training
    data), cut again exactly as training cut them (same limit, fractions, grouping and seed).

    Raises:
        ModelError: the card has no training configuration, or ``dataset`` is not its training data.
    """
    cfg = _run_config(card)
    if dataset.digest != card.training.get("data_digest"):
        raise ModelError(f"the data in {dataset.path} is not the data {card.name} was trained on (digest differs)")
    if cfg.limit is not None and cfg.limit < len(dataset):
        rng = np.random.default_rng(cfg.split_seed)
        dataset = dataset.subset(np.sort(rng.permutation(len(dataset))[: cfg.limit]))
    if cfg.folds:
        cfg = cfg.model_copy(update={"fold": 0})  # any fold: train + validation is the whole training side
    train, val, test = split_indices(cfg, dataset)
    return dataset.subset(train), dataset.subset(val), dataset.subset(test)


def seen_ids(card: ModelCard, dataset: LabelledSet) -> set[str] | None:
    """Ids of the records in ``dataset`` the model trained or was validated on (early stopping,
    calibration, thresholds); empty for other data; ``None`` when its split cannot be rebuilt."""
    if dataset.digest != card.training.get("data_digest"):
        return set()
    try:
        train, val, _ = rebuild_split(card, dataset)
    except (ModelError, ValueError):
        return None
    return set(train.ids) | set(val.ids)


def validation_part(
    task: Task, card: ModelCard, data: Path | None, progress: bool = False
) -> tuple[LabelledSet, LabelledSet]:
    """The model's validation and held-out test records, rebuilt from its card.

    Raises:
        ModelError: the card has no training configuration, is a cross-validated ensemble (whose
            members trained on each other's validation folds), or the data differs.
    """
    if card.training.get("cross_validation_folds") or card.training.get("config", {}).get("folds"):
        raise ModelError(
            f"{card.name}:{card.version} is a cross-validated ensemble: its members trained on each other's "
            "validation folds; export it again from its cross-validation folder instead"
        )
    cfg = _run_config(card, data)
    dataset = task.load_dataset(cfg.data, get_settings().cache_dir, progress, "train")
    _train, val, test = rebuild_split(card, dataset)
    return val, test


def apply_characterization(card: ModelCard, found: Characterization) -> ModelCard:
    """The card with the characterization in it; the balanced threshold becomes the operating threshold."""
    balanced = found.operating_points["balanced"]
    return card.model_copy(
        update={
            "calibration": found.calibration,
            "operating_points": found.operating_points,
            "score_reference": found.score_reference,
            "shift": found.shift,
            "operating_threshold": balanced.threshold,
            "threshold_chosen_on": f"{balanced.chosen_on}: {balanced.criterion}",
        }
    )


def characterize_folder(folder: Path, data: Path | None = None, progress: bool = False) -> ModelCard:
    """Measure an exported model folder (``model.onnx`` + ``card.json``) on its validation split
    and write the completed card back.

    Raises:
        ModelError: not a model folder, or its split cannot be rebuilt.
    """
    card = ModelCard.load(folder / "card.json")
    task = get_task(card.task)
    val, test = validation_part(task, card, data, progress)
    raw = OnnxModel(folder / "model.onnx", card.model_copy(update={"calibration": None}))

    def predict(signals: list[FloatArray]) -> FloatArray:
        return raw.predict_signals(signals)

    probs = predict(val.signals)
    chosen_on = f"validation split (n={len(val)}, rebuilt from the training configuration)"
    found = characterize(task, val.labels, probs, chosen_on, signals=val.signals, predict=predict)
    updated = apply_characterization(card, found)
    temperature, threshold = found.calibration.temperature, found.operating_points["balanced"].threshold
    updates: dict[str, object] = {
        "validation": evaluate_probs(
            task,
            val.labels,
            apply_temperature(probs, temperature),
            threshold,
            split="validation split",
            dataset_path=str(val.path),
            dataset_digest=val.digest,
            note="the split that chose the checkpoint, the calibration and both operating points",
        )
    }
    if len(test):
        updates["test"] = evaluate_probs(
            task,
            test.labels,
            apply_temperature(predict(test.signals), temperature),
            threshold,
            split="held-out test split",
            dataset_path=str(val.path),
            dataset_digest=val.digest,
            note="records never used for training, early stopping, calibration or the thresholds",
        )
    if not updated.validation_scheme:
        cfg = card.training.get("config") or {}
        val_share, test_share = cfg.get("val_fraction", 0.15), cfg.get("test_fraction", 0.15)
        updates["validation_scheme"] = (
            f"stratified record-level split {1 - val_share - test_share:.0%} / {val_share:.0%} / {test_share:.0%} "
            f"(seed {cfg.get('split_seed', 0)}); validation rebuilt from the card's training configuration"
        )
    updated = updated.model_copy(update=updates)
    updated.save(folder / "card.json")
    return updated
