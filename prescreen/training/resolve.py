"""Find the model that ``--model`` names: a model-store tag, an exported folder or a run folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prescreen.errors import ModelError
from prescreen.evaluation.operating import characterize
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.model_store import ModelStore
from prescreen.models.onnx_model import FloatArray, OnnxModel, sha256_file
from prescreen.models.task import Task


@dataclass(frozen=True)
class Predictor:
    """What evaluation needs of a model: its identity, threshold (the balanced point's, which
    decides ``flagged``), every operating point's threshold and a batch predictor."""

    name: str
    version: str
    sha256: str
    threshold: float
    predict: Callable[[list[FloatArray]], FloatArray]
    store_tag: str | None = None
    training_digest: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)


def resolve_model(task: Task, model: str | None, store: ModelStore) -> Predictor:
    """The model to evaluate.

    Args:
        task: the task evaluated.
        model: ``None`` (the task's active model), ``NAME:VERSION`` in the store, a folder with
            ``model.onnx`` + ``card.json``, or a training run folder (its best checkpoint, threshold
            chosen on its validation split).

    Raises:
        ModelError: nothing usable found, corrupt model file, or a model of another task.
    """
    if model is None or not Path(model).exists():
        stored = store.active(task.name) if model is None else store.get(model)
        onnx = OnnxModel(stored.onnx_path, stored.card)
        _same_task(task, stored.card)
        return Predictor(
            stored.card.name,
            stored.card.version,
            stored.card.onnx["sha256"],
            stored.card.operating_threshold,
            onnx.predict_signals,
            stored.tag,
            stored.card.training.get("data_digest"),
            stored.card.thresholds(),
        )
    folder = Path(model)
    if (folder / "model.onnx").is_file() and (folder / "card.json").is_file():
        onnx = OnnxModel.from_folder(folder)
        _same_task(task, onnx.card)
        return Predictor(
            onnx.card.name,
            onnx.card.version or f"run-{folder.name}",
            sha256_file(folder / "model.onnx"),
            onnx.card.operating_threshold,
            onnx.predict_signals,
            training_digest=onnx.card.training.get("data_digest"),
            thresholds=onnx.card.thresholds(),
        )
    return _from_run(task, folder)


def resolve_onnx(task: Task, model: str | None, store: ModelStore) -> tuple[OnnxModel, str | None]:
    """The ONNX model ``--model`` names, with its store tag (``None`` for a folder): the task's
    active model, ``NAME:VERSION`` in the store, or a folder with ``model.onnx`` + ``card.json``.
    For tasks that analyse whole records (``holter``), whose evaluation runs the network itself.

    Raises:
        ModelError: nothing usable found, a corrupt model file, or a model of another task.
    """
    if model is not None and Path(model).exists():
        onnx = OnnxModel.from_folder(Path(model))
        _same_task(task, onnx.card)
        return onnx, None
    stored = store.active(task.name) if model is None else store.get(model)
    _same_task(task, stored.card)
    return OnnxModel(stored.onnx_path, stored.card), stored.tag


def _same_task(task: Task, card: ModelCard) -> None:
    if card.task != task.name:
        raise ModelError(f"model {card.name}:{card.version} screens {card.task}, not {task.name}")


def _from_run(task: Task, folder: Path) -> Predictor:
    from prescreen.training.export import load_run
    from prescreen.training.trainer import predict_probs

    _cfg, summary, run_task, net = load_run(folder)
    if run_task.name != task.name:
        raise ModelError(f"run {folder} trained {run_task.name}, not {task.name}")
    preds = np.load(folder / "predictions.npz")
    # calibrated and decided as its export would be: on its validation split
    found = characterize(task, preds["val_labels"], preds["val_probs"], "validation split")
    threshold = found.operating_points["balanced"].threshold
    temperature = found.calibration.temperature

    def predict(signals: list[FloatArray]) -> FloatArray:
        return apply_temperature(predict_probs(task, net, signals), temperature)

    return Predictor(
        task.name,
        f"run-{folder.name}",
        sha256_file(folder / "checkpoint.pt"),
        threshold,
        predict,
        training_digest=summary.get("data_digest"),
        thresholds={name: spec.threshold for name, spec in found.operating_points.items()},
    )
