"""ONNX export: parity with torch, card contents, ensembles of runs of one split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prescreen.errors import ExportError, ModelError
from prescreen.models.export import export_run
from prescreen.models.onnx_model import OnnxModel
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.trainer import Trainer


def train(folder: Path, out: Path, seed: int, split_seed: int = 0) -> Path:
    task = get_task("ecg-rhythm")
    cfg = RunConfig(task=task.name, data=folder, out=out, epochs=1, batch_size=16, seed=seed, split_seed=split_seed)
    Trainer(task, cfg, progress=False).fit(task.load_dataset(folder, None, False))
    return out


def test_single_run_card_and_parity(tiny_run: Path, synthetic_cinc: Path) -> None:
    card = json.loads((tiny_run / "card.json").read_text())
    assert card["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert card["threshold_chosen_on"].startswith("validation split")
    assert card["test"]["n"] + card["validation"]["n"] + card["training"]["n_train"] == 40
    model = OnnxModel.from_folder(tiny_run)
    task = get_task("ecg-rhythm")
    data = task.load_dataset(synthetic_cinc, None, False)
    probs = model.predict_signals(data.signals[:5])
    assert probs.shape == (5, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_ensemble_of_two_seeds(synthetic_cinc: Path, tmp_path: Path) -> None:
    a = train(synthetic_cinc, tmp_path / "a", seed=1)
    b = train(synthetic_cinc, tmp_path / "b", seed=2)
    onnx, card = export_run([a, b], tmp_path / "ens")
    assert onnx == tmp_path / "ens" / "model.onnx"
    assert card.training["ensemble_of"] == 2 and len(card.training["members"]) == 2
    assert card.onnx["parity_max_abs_diff"] <= 1e-4
    single_a = np.load(a / "predictions.npz")["val_probs"]
    single_b = np.load(b / "predictions.npz")["val_probs"]
    assert not np.allclose(single_a, single_b)  # different seeds, different members


def test_ensemble_refuses_different_splits(synthetic_cinc: Path, tmp_path: Path) -> None:
    a = train(synthetic_cinc, tmp_path / "a", seed=1, split_seed=0)
    b = train(synthetic_cinc, tmp_path / "b", seed=1, split_seed=5)
    with pytest.raises(ExportError, match="same task, data and split"):
        export_run([a, b], tmp_path / "ens")


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a finished training run"):
        export_run(tmp_path)
