"""``resolve_model``: what ``--model`` names — nothing (the active model), a store tag
``NAME:VERSION``, an exported folder, a training run folder — and the one-line ``ModelError`` for
anything else or for a model of another task. Uses the session's tiny ECG run (``tiny_run``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prescreen.errors import ModelError
from prescreen.models.card import ModelCard
from prescreen.models.model_store import ModelStore, StoredModel
from prescreen.models.onnx_model import sha256_file
from prescreen.models.task import get_task
from prescreen.training.resolve import resolve_model

SHIPPED_ECG = Path(__file__).resolve().parents[2] / "prescreen" / "shipped" / "ecg-rhythm"
RUN_FILES = ("run.json", "train.json", "checkpoint.pt", "predictions.npz", "history.json")


def signals(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=int(rng.integers(3000, 9000))).astype(np.float32) for _ in range(n)]


def one_line_model_error(task: str, model: str | None, store: ModelStore | None = None) -> str:
    with pytest.raises(ModelError) as info:
        resolve_model(get_task(task), model, store or ModelStore())
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.fixture
def run_only(tiny_run: Path, tmp_path: Path) -> Path:
    """The tiny training run without its export: a plain run folder."""
    folder = tmp_path / "run-7"
    folder.mkdir()
    for name in RUN_FILES:
        if (tiny_run / name).is_file():
            shutil.copy2(tiny_run / name, folder / name)
    assert not (folder / "model.onnx").exists()
    return folder


# --------------------------------------------------------------------------- what --model names


def test_no_model_is_the_active_one_the_shipped_model_first() -> None:
    shipped = ModelCard.load(SHIPPED_ECG / "card.json")
    got = resolve_model(get_task("ecg-rhythm"), None, ModelStore())
    assert got.sha256 == shipped.onnx["sha256"]
    assert got.threshold == shipped.operating_threshold
    assert got.store_tag is not None and got.store_tag.startswith("ecg-rhythm:")


def test_no_model_follows_activation(tiny_model: StoredModel) -> None:
    got = resolve_model(get_task("ecg-rhythm"), None, ModelStore())
    assert got.store_tag == tiny_model.tag


def test_store_tag(tiny_model: StoredModel, tiny_run: Path) -> None:
    assert ":" in tiny_model.tag
    got = resolve_model(get_task("ecg-rhythm"), tiny_model.tag, ModelStore())
    card = ModelCard.load(tiny_run / "card.json")
    assert got.store_tag == tiny_model.tag
    assert got.version == tiny_model.tag.split(":", 1)[1]
    assert got.sha256 == sha256_file(tiny_run / "model.onnx")
    assert got.threshold == card.operating_threshold
    assert got.training_digest == card.training["data_digest"]
    probs = got.predict(signals())
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_exported_folder(tiny_run: Path) -> None:
    got = resolve_model(get_task("ecg-rhythm"), str(tiny_run), ModelStore())
    card = ModelCard.load(tiny_run / "card.json")
    assert got.store_tag is None
    assert got.sha256 == sha256_file(tiny_run / "model.onnx")
    assert got.threshold == card.operating_threshold
    assert got.version == (card.version or f"run-{tiny_run.name}")
    assert got.predict(signals()).shape == (3, 4)


def test_run_folder_uses_its_checkpoint_and_validation_threshold(tiny_run: Path, run_only: Path) -> None:
    task = get_task("ecg-rhythm")
    from_run = resolve_model(task, str(run_only), ModelStore())
    exported = resolve_model(task, str(tiny_run), ModelStore())
    assert from_run.version == "run-run-7"
    assert from_run.sha256 == sha256_file(run_only / "checkpoint.pt")
    assert from_run.store_tag is None
    assert from_run.training_digest == json.loads((run_only / "train.json").read_text())["data_digest"]
    # the export chose its threshold on the same validation split, from the same checkpoint
    assert from_run.threshold == pytest.approx(exported.threshold, abs=1e-6)
    # torch (run) and ONNX (export) agree: the export's parity tolerance
    xs = signals(4)
    np.testing.assert_allclose(from_run.predict(xs), exported.predict(xs), atol=1e-4)


# --------------------------------------------------------------------------- nothing usable


@pytest.mark.parametrize("name", ["no-such-model:v1", "ecg-rhythm:0000000000000000", "no-such-model"])
def test_unknown_store_tag(name: str) -> None:
    message = one_line_model_error("ecg-rhythm", name)
    assert name in message


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model"
    message = one_line_model_error("ecg-rhythm", str(missing))
    assert str(missing) in message


def test_existing_folder_that_is_neither_export_nor_run(tmp_path: Path) -> None:
    (tmp_path / "card.json").write_text("{}")  # a card without its model is no export
    message = one_line_model_error("ecg-rhythm", str(tmp_path))
    assert "not a finished training run" in message
    assert "checkpoint.pt" in message


def test_corrupt_file_in_the_store(tiny_model: StoredModel) -> None:
    tiny_model.onnx_path.write_bytes(b"tampered")
    assert "SHA-256" in one_line_model_error("ecg-rhythm", tiny_model.tag)


def test_no_active_model(tmp_path: Path) -> None:
    store = ModelStore(import_shipped=False)
    assert "no active model" in one_line_model_error("ecg-rhythm", None, store)


# --------------------------------------------------------------------------- another task


def test_store_tag_of_another_task(tiny_model: StoredModel) -> None:
    message = one_line_model_error("chest-xray", tiny_model.tag)
    assert "ecg-rhythm" in message and "chest-xray" in message


def test_active_model_of_another_task_by_tag() -> None:
    store = ModelStore()
    chest = store.active("chest-xray")
    message = one_line_model_error("ecg-rhythm", chest.tag, store)
    assert "screens chest-xray, not ecg-rhythm" in message


def test_exported_folder_of_another_task(tiny_run: Path) -> None:
    message = one_line_model_error("breast-us", str(tiny_run))
    assert "screens ecg-rhythm, not breast-us" in message


def test_run_folder_of_another_task(run_only: Path) -> None:
    message = one_line_model_error("chest-xray", str(run_only))
    assert "trained ecg-rhythm, not chest-xray" in message
