"""Training of the holter beat network: a smoke run on three MIT-BIH records (1 epoch, 2 folds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from prescreen.config import get_settings
from prescreen.errors import DatasetError
from prescreen.models.card import ModelCard
from prescreen.models.holter_beats import CHANNELS, WINDOW
from prescreen.models.holter_network import HolterBeatNet
from prescreen.models.onnx_model import sha256_file
from prescreen.training.holter import (
    HolterTrainResult,
    assign_folds,
    build_beat_set,
    class_weights,
    perturbed_outcomes,
    train_holter,
)
from tests.conftest import data_dir
from tests.peers import DATA_HINT, require_peer

RECORDS = ["119", "209", "223"]  # V bigeminy, SVTA, V and S beats: every fold meets the rare classes


@pytest.fixture(scope="module")
def mitdb() -> Path:
    folder = data_dir() / "mitdb"
    require_peer(f"the MIT-BIH records under {folder}", (folder / "119.hea").is_file(), DATA_HINT)
    return folder


@pytest.fixture(scope="module")
def run(mitdb: Path, tmp_path_factory: pytest.TempPathFactory) -> HolterTrainResult:
    out = tmp_path_factory.mktemp("holter-run")
    return train_holter(
        mitdb,
        out,
        seed=0,
        epochs=1,
        folds=2,
        progress=False,
        records=RECORDS,
        n_per_record=400,
        resamples=50,
        perturb=False,
    )


@pytest.mark.data
@pytest.mark.e2e
def test_smoke_run_writes_a_valid_card(run: HolterTrainResult, mitdb: Path) -> None:
    card = ModelCard.load(run.out / "card.json")
    assert card.task == "holter" and card.name == "holter-beats"
    assert card.classes == ["N", "S", "V", "F", "Q"] and card.normal_classes == ["N"]
    assert card.operating_threshold == 1.0
    assert card.operating_points["balanced"].threshold == 1.0
    assert card.operating_points["safety"].threshold == 0.5
    assert card.flag_rule.startswith("Flagged when any of")
    assert card.validation is not None
    assert card.validation.split == "2-fold cross-validation by record on DS1 (out-of-fold)"
    assert card.validation.n == 3 and card.validation.dataset_digest == card.training["data_digest"]
    assert set(card.validation.metrics) >= {"accuracy", "qrs_sensitivity", "sensitivity_V", "flag_accuracy"}
    for name, m in card.validation.metrics.items():
        if m.value is not None:
            assert m.ci_low is not None and m.ci_high is not None and m.ci_low <= m.value <= m.ci_high, name
    assert card.onnx["sha256"] == sha256_file(run.out / "model.onnx")
    assert card.training["records"] == RECORDS and len(set(card.training["folds"].values())) == 2
    assert "group k-fold by record" in card.validation_scheme
    assert run.folds == 2 and run.epochs == 1


@pytest.mark.data
@pytest.mark.e2e
def test_smoke_run_exports_an_onnx_beat_classifier(run: HolterTrainResult) -> None:
    session = ort.InferenceSession(str(run.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["signal"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    x = np.random.default_rng(0).normal(size=(7, CHANNELS, WINDOW)).astype(np.float32)
    probs = session.run(["probabilities"], {"signal": x})[0]
    assert probs.shape == (7, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert run.onnx_path.stat().st_size < 3_000_000


@pytest.mark.data
@pytest.mark.e2e
def test_smoke_run_writes_history_oof_and_report(run: HolterTrainResult) -> None:
    history = json.loads((run.out / "history.json").read_text())
    assert {h["network"] for h in history} == {"fold 1", "fold 2", "final"}
    oof = json.loads((run.out / "oof.json").read_text())
    assert oof["task"] == "holter" and oof["dataset"]["n"] == 3
    assert [r["record"] for r in oof["per_record"]] == RECORDS
    assert (run.out / "report.md").is_file() and (run.out / "confusion.png").is_file()


@pytest.mark.data
def test_a_folder_without_ds1_records_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="none of the DS1 records"):
        train_holter(tmp_path, tmp_path / "out", epochs=1, progress=False)


@pytest.mark.data
def test_paced_records_are_never_trained_on(mitdb: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="at least 2 records"):
        train_holter(mitdb, tmp_path / "out", epochs=1, progress=False, records=["102", "119"])


def test_class_weights_favour_rare_classes() -> None:
    labels = np.array([0] * 900 + [1] * 10 + [2] * 90, dtype=np.int64)
    w = class_weights(labels).numpy()
    assert w[1] > w[2] > w[0] > 0
    assert w[3] == 1.0 and w[4] == 1.0  # absent classes


def test_folds_spread_the_records_with_s_beats() -> None:
    class Fake:
        def __init__(self, s: int, v: int) -> None:
            self.labels = np.array([0] * 100 + [1] * s + [2] * v, dtype=np.int64)

    records = [Fake(s, v) for s, v in [(300, 0), (100, 5), (90, 0), (0, 400), (0, 10), (0, 0), (5, 5), (0, 0)]]
    folds = assign_folds(records, 4, seed=0)  # type: ignore[arg-type]
    assert sorted(np.bincount(folds, minlength=4).tolist()) == [2, 2, 2, 2]
    assert len({int(folds[i]) for i in (0, 1, 2)}) == 3  # the three S-rich records in three folds


@pytest.mark.data
def test_a_held_out_record_is_reanalysed_under_each_perturbation(mitdb: Path) -> None:
    (record,) = build_beat_set([mitdb / "119"], get_settings().cache_dir, progress=False)
    found = perturbed_outcomes(HolterBeatNet().eval(), record, seed=0)
    assert list(found) == ["gaussian noise 0.1 mV", "baseline wander 0.5 mV at 0.3 Hz", "gain x0.5"]
    for outcome in found.values():
        assert outcome.record == "119" and outcome.n_ref == 1987
        assert outcome.matched / outcome.n_ref > 0.98  # detection survives each perturbation
