"""Group cross-validation: fold models, out-of-fold operating points, the ensemble's card, INT8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prescreen.errors import ExportError
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import OnnxModel
from prescreen.models.task import get_task
from prescreen.training import export as export_module
from prescreen.training.config import RunConfig
from prescreen.training.crossval import export_cross_validation, is_cross_validation, train_folds


@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.fixtures_images import write_npz

    # chest-xray's 64x64 inputs keep four trainings and exports quick; the code path is the task's
    data = write_npz(tmp_path_factory.mktemp("cxr-cv") / "pneumoniamnist.npz", n=60, seed=3)
    task = get_task("chest-xray")
    out = tmp_path_factory.mktemp("cv") / "run"
    cfg = RunConfig(task=task.name, data=data, out=out, epochs=1, batch_size=16, folds=3, group_by="record")
    train_folds(task, cfg, task.load_dataset(data, None, False, "train"), progress=False)
    return out, data


def test_folds_validate_on_disjoint_parts_that_cover_the_training_side(cv_folder: tuple[Path, Path]) -> None:
    out, _ = cv_folder
    assert is_cross_validation(out)
    preds = [np.load(out / f"fold-{k}" / "predictions.npz") for k in range(3)]
    vals = [set(p["val_ids"].tolist()) for p in preds]
    tests = {tuple(p["test_ids"].tolist()) for p in preds}
    assert len(tests) == 1  # one held-out test part for every fold
    test = set(next(iter(tests)))
    assert not (vals[0] & vals[1]) and not (vals[0] & vals[2]) and not (vals[1] & vals[2])
    assert not test & set().union(*vals)
    assert len(set().union(*vals)) + len(test) == 60


def test_export_chooses_operating_points_out_of_fold_and_completes_the_card(
    cv_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    out, data = cv_folder
    onnx, card = export_cross_validation(out, tmp_path / "ens")
    assert card.missing_for_release() == []
    assert "out-of-fold" in card.operating_points["balanced"].chosen_on
    assert card.operating_points["safety"].threshold <= card.operating_points["balanced"].threshold
    assert card.validation is not None and card.validation.n == card.operating_points["balanced"].positives + (
        card.operating_points["balanced"].negatives
    )
    assert card.training["ensemble_of"] == 3 and "group" in card.validation_scheme
    assert card.shift["perturbations_measured_on"] == "the held-out test part"
    # the test part by distance from the training side: every test image in exactly one band
    assert card.test is not None and sum(row["records"] for row in card.shift["novelty"]) == card.test.n
    assert card.test.confusion is not None
    assert sum(row["positives"] for row in card.shift["novelty"]) == sum(card.test.confusion[1])  # pneumonia row
    assert card.shift["novelty_measured_on"].startswith(f"the held-out test part ({card.test.n} images)")
    at_points = {row["operating_point"]: row for row in card.shift["test_at_operating_points"]}
    assert set(at_points) == {"balanced", "safety"} and card.test is not None
    assert at_points["balanced"]["accuracy"] == pytest.approx(card.test.metrics["accuracy"].value, abs=1e-4)
    assert at_points["safety"]["sensitivity"] >= at_points["balanced"]["sensitivity"]
    model = OnnxModel(onnx, ModelCard.load(tmp_path / "ens" / "card.json"))
    finding = model.screen_signal(get_task("chest-xray").load_dataset(data, None, False).signals[0])
    assert set(finding.operating_points) == {"balanced", "safety"}
    assert finding.flagged == finding.operating_points["balanced"].flagged


def test_an_ensemble_over_the_size_limit_ships_int8_when_decisions_hold(
    cv_folder: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = cv_folder
    monkeypatch.setattr(export_module, "MAX_MODEL_BYTES", 1_000_000)
    monkeypatch.setattr(export_module, "MAX_QUANTIZED_DISAGREEMENT", 1.0)  # tiny untrained nets: any change allowed
    onnx, card = export_cross_validation(out, tmp_path / "int8")
    quantized = card.onnx["quantized"]
    assert onnx.stat().st_size < quantized["fp32_size_bytes"] / 2
    assert 0.0 <= quantized["decision_disagreement_vs_fp32"] <= 1.0
    assert json.loads((tmp_path / "int8" / "card.json").read_text())["onnx"]["sha256"] == card.onnx["sha256"]


def test_quantization_that_changes_too_many_decisions_is_refused(
    cv_folder: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = cv_folder
    monkeypatch.setattr(export_module, "MAX_MODEL_BYTES", 1_000_000)
    monkeypatch.setattr(export_module, "MAX_QUANTIZED_DISAGREEMENT", -1.0)  # nothing may change: refused
    with pytest.raises(ExportError, match="INT8 decisions differ"):
        export_cross_validation(out, tmp_path / "refused")


def test_folds_that_overlap_are_not_a_cross_validation(cv_folder: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = cv_folder
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "fold-1")
    shutil.copytree(copy / "fold-0", copy / "fold-1")
    with pytest.raises(ExportError, match="overlap"):
        export_cross_validation(copy, tmp_path / "x")


def test_without_a_test_part_every_record_is_out_of_fold_and_perturbed_by_its_own_fold_model(
    tmp_path: Path,
) -> None:
    from tests.fixtures_images import write_npz

    data = write_npz(tmp_path / "pneumoniamnist.npz", n=48, seed=5)
    task = get_task("chest-xray")
    out = tmp_path / "run"
    cfg = RunConfig(
        task=task.name, data=data, out=out, epochs=1, batch_size=16, folds=3, test_fraction=0.0, checkpoint="last"
    )
    train_folds(task, cfg, task.load_dataset(data, None, False, "train"), progress=False)
    preds = [np.load(out / f"fold-{k}" / "predictions.npz") for k in range(3)]
    assert all(len(p["test_ids"]) == 0 for p in preds)
    assert sum(len(p["val_ids"]) for p in preds) == 48  # every record validated once
    _, card = export_cross_validation(out, tmp_path / "ens")
    assert card.missing_for_release() == []
    assert card.test is None and card.validation is not None and card.validation.n == 48
    assert card.shift["perturbations_measured_on"].startswith("the out-of-fold records")
    assert card.shift["test_at_operating_points"] == []
    assert "novelty" not in card.shift  # no test part, nothing new to the model to measure
    assert "no test part" in card.validation_scheme
    # the unperturbed row is the out-of-fold evaluation itself: the same records, the same fold models
    none = next(
        r for r in card.shift["perturbations"] if r["perturbation"] == "none" and r["operating_point"] == "balanced"
    )
    assert none["accuracy"] == pytest.approx(card.validation.metrics["accuracy"].value, abs=1e-4)


def test_out_of_fold_predictor_scores_each_fold_with_its_own_model() -> None:
    import torch
    from torch import nn

    from prescreen.training.crossval import out_of_fold_predictor

    class Fixed(nn.Module):
        def __init__(self, cls: int) -> None:
            super().__init__()
            self.cls = cls

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.full((len(x), 2), -20.0)
            logits[:, self.cls] = 20.0
            return logits

    task = get_task("chest-xray")
    predict = out_of_fold_predictor(task, [Fixed(0), Fixed(1)], [2, 3])
    signals = [np.zeros((1, 64, 64), np.float32)] * 5
    np.testing.assert_allclose(predict(signals).argmax(axis=1), [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="expected the 5 out-of-fold records"):
        predict(signals[:4])
    with pytest.raises(ValueError, match="2 fold models for 3 folds"):
        out_of_fold_predictor(task, [Fixed(0), Fixed(1)], [1, 1, 1])


@pytest.fixture(scope="module")
def nested_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.fixtures_images import write_npz

    data = write_npz(tmp_path_factory.mktemp("cxr-nested") / "pneumoniamnist.npz", n=48, seed=7)
    task = get_task("chest-xray")
    out = tmp_path_factory.mktemp("nested") / "run"
    cfg = RunConfig(
        task=task.name, data=data, out=out, epochs=2, batch_size=16, folds=3, test_fraction=0.0, checkpoint="last"
    )
    train_folds(task, cfg, task.load_dataset(data, None, False, "train"), progress=False, nested=True)
    return out, data


def test_a_nested_cross_validation_trains_one_model_per_pair_of_folds(nested_folder: tuple[Path, Path]) -> None:
    out, _ = nested_folder
    assert json.loads((out / "cv.json").read_text())["nested"] == ["pair-0-1", "pair-0-2", "pair-1-2"]
    folds = [set(np.load(out / f"fold-{k}" / "predictions.npz")["val_ids"].tolist()) for k in range(3)]
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        cfg = RunConfig.model_validate_json((out / f"pair-{i}-{j}" / "run.json").read_text())
        assert (cfg.fold, cfg.second_fold) == (i, j)
        held = set(np.load(out / f"pair-{i}-{j}" / "predictions.npz")["val_ids"].tolist())
        assert held == folds[i] | folds[j]
        assert json.loads((out / f"pair-{i}-{j}" / "train.json").read_text())["n_train"] == 48 - len(held)


def test_nested_export_chooses_points_on_ensembles_that_never_saw_the_record(
    nested_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    from prescreen.training.crossval import nested_out_of_fold_probs

    out, _ = nested_folder
    _, card = export_cross_validation(out, tmp_path / "ens")
    assert card.missing_for_release() == []
    assert card.operating_points["balanced"].chosen_on.startswith("nested out-of-fold")
    assert card.training["ensemble_of"] == 3 and card.training["nested_models"] == 3
    members = sum(m["train_seconds"] for m in card.training["members"])
    assert card.training["train_seconds_total"] == pytest.approx(members + card.training["nested_train_seconds"], 0.01)
    assert card.training["nested_train_seconds"] > 0
    assert card.validation is not None and card.validation.n == 48 and card.validation.split.startswith("nested")
    assert any("nested out-of-fold scores" in c for c in card.caveats)
    # the perturbation table's unperturbed row re-scores every record with its nested models: it must
    # reproduce the figures computed from their stored predictions
    none = next(
        r for r in card.shift["perturbations"] if r["perturbation"] == "none" and r["operating_point"] == "balanced"
    )
    assert none["accuracy"] == pytest.approx(card.validation.metrics["accuracy"].value, abs=1e-4)
    assert "nested models" in card.shift["perturbations_measured_on"]
    single = {row["operating_point"] for row in card.shift["single_models_out_of_fold_at_operating_points"]}
    assert single == {"balanced", "safety"}
    # a record of fold 0 is the mean of pairs (0,1) and (0,2), never of (1,2), which trained on it
    fold_ids = [np.load(out / f"fold-{k}" / "predictions.npz")["val_ids"] for k in range(3)]
    probs = nested_out_of_fold_probs(out, ["pair-0-1", "pair-0-2", "pair-1-2"], fold_ids)
    first = str(fold_ids[0][0])
    p01, p02 = (np.load(out / p / "predictions.npz") for p in ("pair-0-1", "pair-0-2"))
    expected = (
        p01["val_probs"][list(map(str, p01["val_ids"])).index(first)]
        + p02["val_probs"][list(map(str, p02["val_ids"])).index(first)]
    ) / 2
    np.testing.assert_allclose(probs[0], expected, atol=1e-6)


def test_an_unfinished_nested_cross_validation_is_not_exported(
    nested_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    out, _ = nested_folder
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "pair-0-2")
    with pytest.raises(ExportError, match="pair-0-2 is missing"):
        export_cross_validation(copy, tmp_path / "x")


def test_a_finished_fold_is_kept_and_a_changed_configuration_or_data_retrains(
    nested_folder: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from prescreen.training import crossval

    out, data = nested_folder
    copy = tmp_path / "run"  # a moved run folder: its run.json names the old one, and it is still kept
    shutil.copytree(out, copy)
    task = get_task("chest-xray")
    cfg = RunConfig(
        task=task.name, data=data, out=copy, epochs=2, batch_size=16, folds=3, test_fraction=0.0, checkpoint="last"
    )
    trained: list[str] = []
    real_fit = crossval.Trainer.fit

    def spy(self: crossval.Trainer, dataset: crossval.LabelledSet) -> crossval.TrainResult:
        trained.append(self.config.out.name)
        return real_fit(self, dataset)

    monkeypatch.setattr(crossval.Trainer, "fit", spy)
    kept = (copy / "fold-0" / "train.json").read_text()
    (copy / "pair-1-2" / "train.json").unlink()  # an interrupted run: retrained
    dataset = task.load_dataset(data, None, False, "train")
    results = train_folds(task, cfg, dataset, progress=False, nested=True)
    assert trained == ["pair-1-2"] and len(results) == 6
    assert (copy / "fold-0" / "train.json").read_text() == kept
    assert results[0].run_dir == copy / "fold-0" and results[0].kept_epoch == 2

    trained.clear()
    train_folds(task, cfg.model_copy(update={"epochs": 1}), dataset, progress=False)
    assert trained == ["fold-0", "fold-1", "fold-2"]
    assert json.loads((copy / "fold-0" / "train.json").read_text())["epochs_run"] == 1

    trained.clear()
    changed = dataclasses.replace(dataset, digest="0" * 64)  # the same options on data that has changed
    train_folds(task, cfg.model_copy(update={"epochs": 1}), changed, progress=False)
    assert trained == ["fold-0", "fold-1", "fold-2"]


def test_nested_predictor_scores_each_fold_with_the_pairs_that_held_it_out() -> None:
    import torch
    from torch import nn

    from prescreen.training.crossval import nested_out_of_fold_predictor

    class Fixed(nn.Module):
        def __init__(self, p1: float) -> None:
            super().__init__()
            self.logits = torch.tensor([0.0, float(np.log(p1 / (1 - p1)))])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits.expand(len(x), 2)

    task = get_task("chest-xray")
    nets: dict[tuple[int, int], nn.Module] = {(0, 1): Fixed(0.2), (0, 2): Fixed(0.4), (1, 2): Fixed(0.9)}
    predict = nested_out_of_fold_predictor(task, nets, [1, 1, 2])
    p = predict([np.zeros((1, 64, 64), np.float32)] * 4)[:, 1]
    np.testing.assert_allclose(p, [0.3, 0.55, 0.65, 0.65], atol=1e-5)
    with pytest.raises(ValueError, match="needs the 3 pair models"):
        nested_out_of_fold_predictor(task, {(0, 1): Fixed(0.5)}, [1, 1, 2])
