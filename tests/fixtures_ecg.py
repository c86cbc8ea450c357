"""Fixtures for flows that need a model: a synthetic CinC-layout folder the tests write
themselves, a tiny model trained on it for one epoch, exported and put in the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from prescreen.models.model_store import ModelStore, StoredModel
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.export import export_run
from prescreen.training.trainer import Trainer

FS = 300
CODES = ["N", "A", "O", "~"]


def synthetic_ecg(code: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A crude single-lead ECG: regular beats (N), irregular beats (A), wide beats (O), noise (~)."""
    n = int(seconds * FS)
    t = np.arange(n) / FS
    x = np.zeros(n)
    if code == "~":
        return rng.normal(0, 0.5, n)
    beat = 0.3
    while beat < seconds:
        width = 0.04 if code != "O" else 0.09
        x += 1.2 * np.exp(-(((t - beat) / width) ** 2))
        rr = 0.8 if code in ("N", "O") else rng.uniform(0.4, 1.2)
        beat += rr
    return x + 0.1 * np.sin(2 * np.pi * 0.3 * t) + rng.normal(0, 0.02, n)


def write_cinc_folder(folder: Path, n_per_class: int = 10, seed: int = 0) -> Path:
    """Write a CinC 2017-layout folder (WFDB format 16 + REFERENCE.csv)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for _k in range(n_per_class):
        for code in CODES:
            name = f"S{len(rows):05d}"
            sig = synthetic_ecg(code, float(rng.uniform(10, 35)), rng)
            wfdb.wrsamp(
                name,
                fs=FS,
                units=["mV"],
                sig_name=["ECG"],
                p_signal=sig[:, None],
                fmt=["16"],
                adc_gain=[1000.0],
                baseline=[0],
                write_dir=str(folder),
            )
            rows.append(f"{name},{code}")
    (folder / "REFERENCE.csv").write_text("\n".join(rows) + "\n")
    (folder / "RECORDS").write_text("\n".join(r.split(",")[0] for r in rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def synthetic_cinc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cinc_folder(tmp_path_factory.mktemp("cinc"), n_per_class=10)


@pytest.fixture(scope="session")
def tiny_run(synthetic_cinc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run on 40 synthetic records, exported (model.onnx + card.json)."""
    task = get_task("ecg-rhythm")
    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = RunConfig(task=task.name, data=synthetic_cinc, out=out, epochs=1, batch_size=16, seed=0)
    Trainer(task, cfg, progress=False).fit(task.load_dataset(synthetic_cinc, None, False))
    export_run(out)
    return out


@pytest.fixture
def tiny_model(tiny_run: Path) -> StoredModel:
    """The tiny model added to this test's (isolated) store and made active."""
    from prescreen.models.card import ModelCard

    store = ModelStore()
    stored = store.add(tiny_run / "model.onnx", ModelCard.load(tiny_run / "card.json"))
    return store.activate("ecg-rhythm", stored.tag)
