"""The whole ECG flow through the real CLI and a real BentoML server process:
train (one epoch, 40 records) → export (parity) → models list/activate → serve → screen →
bad inputs → a good record again."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import run_cli
from tests.fixtures_ecg import write_cinc_folder

pytestmark = pytest.mark.e2e


def test_train_export_activate(synthetic_cinc: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = run_cli(
        "train",
        "ecg-rhythm",
        "--data",
        str(synthetic_cinc),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        env=cli_env,
    )
    assert r.returncode == 0, r.stderr
    assert (run / "checkpoint.pt").is_file() and (run / "predictions.npz").is_file()
    r = run_cli("export", str(run), env=cli_env)
    assert r.returncode == 0, r.stderr
    card = json.loads((run / "card.json").read_text())
    assert card["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert card["classes"] == ["normal", "af", "other", "noisy"]
    assert card["training"]["data_digest"] and 0 <= card["operating_threshold"] <= 1
    assert card["test"]["metrics"]["accuracy"]["ci_low"] <= card["test"]["metrics"]["accuracy"]["value"]
    tag = r.stdout.split("stored as ")[1].split()[0].rstrip(";")
    r = run_cli("models", "activate", "ecg-rhythm", tag, env=cli_env)
    assert r.returncode == 2 and "prescreen models promote" in r.stderr  # a new model goes through the gate
    r = run_cli("models", "activate", "ecg-rhythm", tag, "--force", "--reason", "e2e: the served path", env=cli_env)
    assert r.returncode == 0, r.stderr
    listing = run_cli("models", "list", env=cli_env).stdout
    row = next(line for line in listing.splitlines() if tag in line)
    assert "yes" in row
    out = tmp_path / "eval.json"
    r = run_cli(
        "evaluate",
        "ecg-rhythm",
        "--data",
        str(synthetic_cinc),
        "--json",
        str(out),
        "--report",
        str(tmp_path / "report"),
        env=cli_env,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["model"]["version"] == tag.split(":")[1] and doc["dataset"]["n"] == 40
    assert (tmp_path / "report" / "roc.png").stat().st_size > 1000
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000
    assert "training data" in r.stderr  # evaluated on its own training set: said so
    listing = run_cli("models", "list", env=cli_env).stdout
    assert "held-out test split" in listing and "n=40" not in listing  # ... and never the headline
    other = write_cinc_folder(tmp_path / "other", n_per_class=3, seed=7)
    r = run_cli("evaluate", "ecg-rhythm", "--data", str(other), env=cli_env)
    assert r.returncode == 0 and "training data" not in r.stderr, r.stderr
    assert "n=12" in run_cli("models", "list", env=cli_env).stdout


def test_same_seed_same_metrics(synthetic_cinc: Path, tmp_path: Path) -> None:
    from prescreen.models.task import get_task
    from prescreen.training.config import RunConfig
    from prescreen.training.trainer import Trainer

    task = get_task("ecg-rhythm")
    data = task.load_dataset(synthetic_cinc, None, False)
    results = []
    for name in ("a", "b"):
        cfg = RunConfig(task=task.name, data=synthetic_cinc, out=tmp_path / name, epochs=1, batch_size=16, seed=3)
        results.append(Trainer(task, cfg, progress=False).fit(data).best_val_auroc)
        results.append((tmp_path / name / "history.json").read_text())
    assert results[0] == results[2]
    assert results[1] == results[3]


def test_served_screening_with_bad_inputs(tiny_model: object, synthetic_cinc: Path, server: str) -> None:
    def files(hea: bytes, dat: bytes | None) -> list[tuple[str, tuple[str, bytes]]]:
        out = [("file", ("S00002.hea", hea))]
        if dat is not None:
            out.append(("file", ("S00002.dat", dat)))
        return out

    hea = (synthetic_cinc / "S00002.hea").read_bytes()
    dat = (synthetic_cinc / "S00002.dat").read_bytes()
    good = httpx.post(f"{server}/v1/screen", files=files(hea, dat), timeout=30)
    assert good.status_code == 200, good.text
    assert good.json()["model"]["version"] == tiny_model.card.version  # type: ignore[attr-defined]
    refusals = [
        (files(hea, dat[:64]), f"signal file S00002.dat is truncated: 64 bytes, header implies {len(dat)}"),
        (files(hea, None), "WFDB header S00002.hea refers to S00002.dat, which is missing"),
        (files(hea, b""), "file 'S00002.dat' is empty"),
    ]
    for bad, detail in refusals:
        r = httpx.post(f"{server}/v1/screen", files=bad, timeout=30)
        assert (r.status_code, r.json()) == (400, {"error": "invalid_study", "detail": detail}), r.text
    r = httpx.post(f"{server}/v1/screen", timeout=30)
    no_file = {"error": "invalid_study", "detail": "no file was sent; send the study as multipart field 'file'"}
    assert (r.status_code, r.json()) == (400, no_file)
    again = httpx.post(f"{server}/v1/screen", files=files(hea, dat), timeout=30)
    assert again.status_code == 200 and again.json() == good.json()
    models = {m["task"]: m["version"] for m in httpx.get(f"{server}/v1/models", timeout=10).json()["models"]}
    assert models["ecg-rhythm"] == tiny_model.card.version  # type: ignore[attr-defined]
