"""The model store: add, activate, record evaluations, import shipped models once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prescreen.errors import ModelError
from prescreen.models import model_store as store_module
from prescreen.models.card import ModelCard
from prescreen.models.model_store import ModelStore


@pytest.fixture
def shipped(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "shipped" / "ecg-rhythm"
    folder.mkdir(parents=True)
    shutil.copy(tiny_run / "model.onnx", folder / "model.onnx")
    shutil.copy(tiny_run / "card.json", folder / "card.json")
    monkeypatch.setattr(store_module, "SHIPPED_DIR", folder.parent)
    return folder


def test_shipped_model_imported_once_and_active(shipped: Path) -> None:
    first = ModelStore()
    models = first.list("ecg-rhythm")
    assert len(models) == 1 and models[0].active
    assert first.active("ecg-rhythm").card.onnx["sha256"] == ModelCard.load(shipped / "card.json").onnx["sha256"]
    ModelStore()  # a second use imports nothing more
    assert len(ModelStore().list("ecg-rhythm")) == 1


def test_corrupt_shipped_model_is_refused(shipped: Path) -> None:
    (shipped / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="does not match its card"):
        ModelStore()


def test_activate_switches_and_checks_task(tiny_run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(store_module, "SHIPPED_DIR", tmp_path / "none")
    store = ModelStore()
    card = ModelCard.load(tiny_run / "card.json")
    a = store.add(tiny_run / "model.onnx", card)
    b = store.add(tiny_run / "model.onnx", card)
    assert a.tag != b.tag
    with pytest.raises(ModelError, match="no active model"):
        store.active("ecg-rhythm")
    store.activate("ecg-rhythm", a.tag)
    assert store.active("ecg-rhythm").tag == a.tag
    store.activate("ecg-rhythm", b.tag)
    assert store.active("ecg-rhythm").tag == b.tag
    assert [m.active for m in store.list("ecg-rhythm") if m.tag == a.tag] == [False]
    with pytest.raises(ModelError, match="not chest"):
        store.activate("chest", a.tag)
    with pytest.raises(ModelError, match="not found"):
        store.get("ecg-rhythm:nope")


def test_record_evaluation_shows_as_headline(tiny_run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(store_module, "SHIPPED_DIR", tmp_path / "none")
    store = ModelStore()
    card = ModelCard.load(tiny_run / "card.json")
    stored = store.add(tiny_run / "model.onnx", card)
    assert card.test is not None
    elsewhere = card.test.model_copy(update={"split": "/data/elsewhere", "n": 7, "dataset_digest": "0" * 64})
    store.record_evaluation(stored.tag, elsewhere)
    head = store.get(stored.tag).card.headline
    assert head is not None and head.split == "/data/elsewhere" and head.n == 7
    # an evaluation on the training data is recorded but never becomes the headline figure
    on_training = card.test.model_copy(update={"split": "/data/train", "n": 40})
    store.record_evaluation(stored.tag, on_training)
    stored_card = store.get(stored.tag).card
    assert len(stored_card.evaluations) == 2
    assert stored_card.headline is not None and stored_card.headline.split == "/data/elsewhere"
