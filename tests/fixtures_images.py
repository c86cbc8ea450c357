"""Fixtures for image flows: synthetic PneumoniaMNIST-like npz and BUSI-like folder the tests
write themselves, tiny models trained on them for one epoch, exported and put in the store."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prescreen.models.card import ModelCard
from prescreen.models.model_store import ModelStore, StoredModel
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.export import export_run
from prescreen.training.trainer import Trainer


def blob_image(size: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """Noise, plus ``label`` bright blobs: a pattern a tiny network can pick up."""
    img = rng.normal(90, 20, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for _ in range(label * 2):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_npz(path: Path, n: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", n // 2)):
        labels = np.arange(count) % 2
        arrays[f"{split}_images"] = np.stack([blob_image(28, int(k), rng) for k in labels])
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_busi(folder: Path, per_class: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(("normal", "benign", "malignant")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / name / f"{name} ({i}).png").write_bytes(png_bytes(blob_image(96, label, rng)))
    return folder


def tiny(task_name: str, data: Path, out: Path) -> Path:
    task = get_task(task_name)
    cfg = RunConfig(task=task_name, data=data, out=out, epochs=1, batch_size=16, seed=0)
    Trainer(task, cfg, progress=False).fit(task.load_dataset(data, None, False, "train"))
    export_run(out)
    return out


@pytest.fixture(scope="session")
def synthetic_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("mnist") / "pneumoniamnist.npz")


@pytest.fixture(scope="session")
def synthetic_busi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_busi(tmp_path_factory.mktemp("busi"))


@pytest.fixture(scope="session")
def tiny_image_runs(
    synthetic_npz: Path, synthetic_busi: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-runs")
    return {
        "chest-xray": tiny("chest-xray", synthetic_npz, root / "cxr"),
        "breast-us": tiny("breast-us", synthetic_busi, root / "bus"),
    }


@pytest.fixture
def image_models(tiny_image_runs: dict[str, Path]) -> dict[str, StoredModel]:
    """Both tiny image models added to this test's store and made active."""
    store = ModelStore()
    out = {}
    for task, run in tiny_image_runs.items():
        stored = store.add(run / "model.onnx", ModelCard.load(run / "card.json"))
        out[task] = store.activate(task, stored.tag)
    return out
