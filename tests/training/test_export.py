"""ONNX export: parity with torch, card contents, ensembles of runs of one split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from prescreen.errors import ExportError, ModelError
from prescreen.models.onnx_model import OnnxModel
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.export import export_run
from prescreen.training.trainer import Trainer

#: float32 arithmetic in torch and in ONNX Runtime differs in rounding (fused kernels, summation
#: order), so parity is a tolerance, not equality: the exporter's own (PARITY_TOLERANCE).
PARITY_TOLERANCE = 1e-4


def parity_inputs(folder: Path, records: int = 8, noise: int = 8) -> np.ndarray:
    """Network inputs of our own choosing: the windows of the first ``records`` synthetic records
    (not only the validation windows that the exporter checks) and ``noise`` windows of white noise."""
    task = get_task("ecg-rhythm")
    data = task.load_dataset(folder, None, False)
    windows = np.concatenate([task.windows(signal) for signal in data.signals[:records]]).astype(np.float32)
    rng = np.random.default_rng(1234)
    random = rng.normal(0.0, 1.0, (noise, *windows.shape[1:])).astype(np.float32)
    return np.concatenate([windows, random])


def recomputed_parity(runs: list[Path], onnx_path: Path, inputs: np.ndarray) -> float:
    """Max |torch - ONNX Runtime|, computed here rather than read from the card: each run's best
    checkpoint in torch (softmax, averaged over the runs as an ensemble does) against the exported
    file in a plain ONNX Runtime session, on the same inputs."""
    task = get_task("ecg-rhythm")
    nets = []
    for run in runs:
        net = task.build_network()
        net.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True))
        nets.append(net.eval())
    with torch.inference_mode():
        signal = torch.from_numpy(inputs)
        expected = torch.stack([torch.softmax(net(signal), dim=1) for net in nets]).mean(dim=0).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    [model_input] = session.get_inputs()
    got = session.run(None, {model_input.name: inputs})[0]
    assert got.shape == expected.shape == (len(inputs), len(task.classes))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    return float(np.max(np.abs(got - expected)))


def train(folder: Path, out: Path, seed: int, split_seed: int = 0) -> Path:
    task = get_task("ecg-rhythm")
    cfg = RunConfig(task=task.name, data=folder, out=out, epochs=1, batch_size=16, seed=seed, split_seed=split_seed)
    Trainer(task, cfg, progress=False).fit(task.load_dataset(folder, None, False))
    return out


def test_single_run_card_and_parity(tiny_run: Path, synthetic_cinc: Path) -> None:
    card = json.loads((tiny_run / "card.json").read_text())
    assert recomputed_parity([tiny_run], tiny_run / "model.onnx", parity_inputs(synthetic_cinc)) <= PARITY_TOLERANCE
    assert card["threshold_chosen_on"].startswith("validation split")
    assert card["test"]["n"] + card["validation"]["n"] + card["training"]["n_train"] == 40
    assert "novelty" not in card["shift"]  # ECG records: no image distance
    model = OnnxModel.from_folder(tiny_run)
    task = get_task("ecg-rhythm")
    data = task.load_dataset(synthetic_cinc, None, False)
    probs = model.predict_signals(data.signals[:5])
    assert probs.shape == (5, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_ensemble_of_two_seeds(synthetic_cinc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # two full-size ECG members (12 MB) of one epoch each: the parity of the FP32 ensemble is what is
    # tested here (INT8 for large ensembles is tested in test_crossval.py)
    monkeypatch.setattr("prescreen.training.export.MAX_MODEL_BYTES", 100_000_000)
    a = train(synthetic_cinc, tmp_path / "a", seed=1)
    b = train(synthetic_cinc, tmp_path / "b", seed=2)
    onnx, card = export_run([a, b], tmp_path / "ens")
    assert onnx == tmp_path / "ens" / "model.onnx"
    assert card.training["ensemble_of"] == 2 and len(card.training["members"]) == 2
    assert recomputed_parity([a, b], onnx, parity_inputs(synthetic_cinc)) <= PARITY_TOLERANCE
    assert recomputed_parity([a], onnx, parity_inputs(synthetic_cinc)) > PARITY_TOLERANCE  # the file is the ensemble
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
