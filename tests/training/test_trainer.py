"""The training loop on a toy task (32-sample signals, a two-layer network; milliseconds an epoch):
seeded reproducibility, the run folder, class weights, early stopping, the best checkpoint.

The split itself is covered in ``test_split.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from prescreen.datasets.collections import LabelledSet
from prescreen.errors import DatasetError
from prescreen.models.task import Task, get_task
from prescreen.training.config import RunConfig
from prescreen.training.split import stratified_split
from prescreen.training.trainer import Trainer, TrainResult, predict_probs

LENGTH = 32


def _train_view(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (x + rng.normal(0.0, 0.1, x.shape)).astype(np.float32)[None, :]


def _mlp(n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(LENGTH, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, n_classes))


class Constant(nn.Module):
    """Ignores its input: the same logits for every item, so the validation AUROC is always 0.5."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1)


def toy_task(classes: tuple[str, ...] = ("normal", "abnormal"), net: type[nn.Module] | None = None) -> Task:
    """The ecg-rhythm task with the signal, network and classes swapped for toy ones."""
    build = (lambda: net(len(classes))) if net is not None else (lambda: _mlp(len(classes)))
    return dataclasses.replace(
        get_task("ecg-rhythm"),
        name="toy",
        classes=classes,
        normal_classes=("normal",),
        windows=lambda s: np.ascontiguousarray(s[None, None, :], dtype=np.float32),
        train_view=_train_view,
        build_network=build,
    )


def toy_data(counts: list[int], seed: int = 0, path: Path = Path("toy")) -> LabelledSet:
    """Class k: Gaussian noise around k (learnable, not trivially)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
    signals = [rng.normal(float(k), 1.0, LENGTH).astype(np.float32) for k in labels]
    return LabelledSet(path, [f"r{i:03d}" for i in range(len(labels))], labels, signals, f"digest-{seed}")


def fit(task: Task, data: LabelledSet, out: Path, **cfg: Any) -> TrainResult:
    config = RunConfig(task=task.name, data=data.path, out=out, **{"epochs": 3, "batch_size": 8, **cfg})
    return Trainer(task, config, progress=False).fit(data)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)  # type: ignore[no-any-return]


def assert_predictions_are_the_checkpoints(task: Task, data: LabelledSet, run: Path) -> None:
    """The stored validation probabilities are what the stored checkpoint predicts."""
    net = task.build_network()
    net.load_state_dict(weights(run))
    preds = np.load(run / "predictions.npz")
    by_id = dict(zip(data.ids, data.signals, strict=True))
    probs = predict_probs(task, net, [by_id[i] for i in preds["val_ids"].tolist()])
    np.testing.assert_allclose(probs, preds["val_probs"], atol=1e-6)


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_same_weights_and_predictions(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([30, 30])
    a = fit(task, data, tmp_path / "a", seed=3)
    b = fit(task, data, tmp_path / "b", seed=3)
    wa, wb = weights(a.run_dir), weights(b.run_dir)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    pa, pb = np.load(a.run_dir / "predictions.npz"), np.load(b.run_dir / "predictions.npz")
    for key in pa.files:
        np.testing.assert_array_equal(pa[key], pb[key])
    ha = json.loads((a.run_dir / "history.json").read_text())
    hb = json.loads((b.run_dir / "history.json").read_text())
    assert ha == hb
    assert (a.best_epoch, a.best_val_auroc, a.epochs_run) == (b.best_epoch, b.best_val_auroc, b.epochs_run)


def test_other_seed_other_weights_same_split(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([30, 30])
    a = fit(task, data, tmp_path / "a", seed=1, split_seed=5)
    b = fit(task, data, tmp_path / "b", seed=2, split_seed=5)
    wa, wb = weights(a.run_dir), weights(b.run_dir)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    pa, pb = np.load(a.run_dir / "predictions.npz"), np.load(b.run_dir / "predictions.npz")
    np.testing.assert_array_equal(pa["val_ids"], pb["val_ids"])  # ensemble members share the split
    np.testing.assert_array_equal(pa["test_ids"], pb["test_ids"])


def test_split_seed_changes_the_split_not_the_initialisation(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([30, 30])
    a = fit(task, data, tmp_path / "a", seed=1, split_seed=0, epochs=1)
    b = fit(task, data, tmp_path / "b", seed=1, split_seed=1, epochs=1)
    pa, pb = np.load(a.run_dir / "predictions.npz"), np.load(b.run_dir / "predictions.npz")
    assert not np.array_equal(pa["val_ids"], pb["val_ids"])


# --------------------------------------------------------------------------- the run folder


def test_run_folder_holds_config_checkpoint_history_predictions(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([40, 20])
    result = fit(task, data, tmp_path / "run", epochs=2, val_fraction=0.2, test_fraction=0.2)
    run = result.run_dir
    assert RunConfig.model_validate_json((run / "run.json").read_text()).epochs == 2
    summary = json.loads((run / "train.json").read_text())
    assert summary["n_records"] == 60
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 60
    assert (summary["n_val"], summary["n_test"]) == (12, 12)
    assert summary["data_digest"] == data.digest
    preds = np.load(run / "predictions.npz")
    val, test = set(preds["val_ids"].tolist()), set(preds["test_ids"].tolist())
    assert not val & test
    assert preds["val_probs"].shape == (12, 2)
    np.testing.assert_allclose(preds["test_probs"].sum(axis=1), 1.0, atol=1e-5)
    # the labels stored are those of the ids stored
    label_of = dict(zip(data.ids, data.labels.tolist(), strict=True))
    assert preds["val_labels"].tolist() == [label_of[i] for i in preds["val_ids"].tolist()]
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, result.epochs_run + 1))


def test_checkpoint_is_the_best_epoch_and_its_predictions_are_stored(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([30, 30])
    result = fit(task, data, tmp_path / "run", epochs=4, patience=10)
    history = json.loads((result.run_dir / "history.json").read_text())
    aurocs = [h["val_flag_auroc"] for h in history]
    assert result.best_val_auroc == max(aurocs)
    assert result.best_epoch == aurocs.index(max(aurocs)) + 1  # the first epoch that reached it
    assert_predictions_are_the_checkpoints(task, data, result.run_dir)


def test_checkpoint_last_keeps_the_final_epoch_and_runs_the_whole_schedule(tmp_path: Path) -> None:
    task, data = toy_task(net=Constant), toy_data([30, 30])
    # a constant network never improves after epoch 1: 'best' stops early, 'last' runs on
    best = fit(task, data, tmp_path / "best", epochs=6, patience=1)
    last = fit(task, data, tmp_path / "last", epochs=6, patience=1, checkpoint="last")
    assert best.epochs_run == 2 and best.kept_epoch == 1
    assert last.epochs_run == 6 and last.kept_epoch == 6
    summary = json.loads((tmp_path / "last" / "train.json").read_text())
    assert (summary["checkpoint"], summary["kept_epoch"]) == ("last", 6)


def test_checkpoint_last_stores_the_final_weights_and_their_predictions(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([30, 30])
    result = fit(task, data, tmp_path / "run", epochs=5, checkpoint="last", lr=0.05)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert result.kept_val_auroc == history[-1]["val_flag_auroc"]
    assert_predictions_are_the_checkpoints(task, data, result.run_dir)
    # the same seed with 'best' keeps an earlier epoch (the first here, seeded), whose weights differ
    best = fit(task, data, tmp_path / "best", epochs=5, patience=10, lr=0.05)
    assert best.kept_epoch == best.best_epoch < 5
    assert any(not torch.equal(weights(best.run_dir)[k], weights(result.run_dir)[k]) for k in weights(result.run_dir))


def test_limit_trains_on_a_subset(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([30, 30])
    fit(task, data, tmp_path / "run", epochs=1, limit=20)
    assert json.loads((tmp_path / "run" / "train.json").read_text())["n_records"] == 20


# --------------------------------------------------------------------------- class weights


class _SpyLoss(nn.CrossEntropyLoss):
    seen: ClassVar[list[torch.Tensor]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.weight is not None
        _SpyLoss.seen.append(self.weight.clone())


@pytest.fixture
def spy_loss(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    _SpyLoss.seen = []
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", _SpyLoss)
    return _SpyLoss.seen


def test_rarer_classes_weigh_more(tmp_path: Path, spy_loss: list[torch.Tensor]) -> None:
    task, data = toy_task(("normal", "a", "b")), toy_data([60, 20, 8])
    fit(task, data, tmp_path / "run", epochs=1, test_fraction=0.0)
    (w,) = spy_loss
    assert w.shape == (3,)
    assert w[0] < w[1] < w[2], "the rarer the class, the larger its weight"
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-5)  # normalised: the loss scale stays put


def test_balanced_classes_weigh_the_same(tmp_path: Path, spy_loss: list[torch.Tensor]) -> None:
    task, data = toy_task(), toy_data([30, 30])
    fit(task, data, tmp_path / "run", epochs=1)
    (w,) = spy_loss
    np.testing.assert_allclose(w.numpy(), [1.0, 1.0], atol=1e-6)


def test_a_class_missing_from_training_gets_a_finite_weight(tmp_path: Path, spy_loss: list[torch.Tensor]) -> None:
    task, data = toy_task(("normal", "a", "never")), toy_data([30, 30])
    fit(task, data, tmp_path / "run", epochs=1)
    (w,) = spy_loss
    assert torch.isfinite(w).all() and (w > 0).all()


# --------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path, patience: int) -> None:
    task, data = toy_task(net=Constant), toy_data([30, 30])
    result = fit(task, data, tmp_path / "run", epochs=20, patience=patience)
    assert result.best_epoch == 1
    assert result.best_val_auroc == pytest.approx(0.5)
    assert result.epochs_run == 1 + patience
    assert len(json.loads((result.run_dir / "history.json").read_text())) == 1 + patience


def test_without_early_stop_every_epoch_runs(tmp_path: Path) -> None:
    task, data = toy_task(net=Constant), toy_data([30, 30])
    result = fit(task, data, tmp_path / "run", epochs=4, patience=4)
    assert result.epochs_run == 4


def test_validation_without_a_flagged_record_is_refused_before_training(tmp_path: Path) -> None:
    task, data = toy_task(), toy_data([18, 2])
    seed = next(s for s in range(100) if not (data.labels[stratified_split(data.labels, 0.15, 0.15, s)[1]] == 1).any())
    with pytest.raises(DatasetError, match="holds no flagged record"):
        fit(task, data, tmp_path / "run", epochs=2, split_seed=seed)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- predict_probs


def test_predict_probs_is_the_softmax_in_eval_mode() -> None:
    task = toy_task()
    torch.manual_seed(0)
    net = task.build_network()
    net.train()
    signals = [np.random.default_rng(i).normal(size=LENGTH).astype(np.float32) for i in range(5)]
    probs = predict_probs(task, net, signals, batch=2)
    assert not net.training  # dropout off
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(np.stack(signals)[:, None, :])), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(probs, predict_probs(task, net, signals), atol=1e-7)
