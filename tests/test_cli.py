"""CLI user errors: one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from prescreen.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_help_lists_commands() -> None:
    code, out = run("--help")
    assert code == 0
    for command in ("train", "evaluate", "export", "models", "serve"):
        assert command in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["evaluate", "no-such-task", "--data", "/nonexistent"], "unknown task 'no-such-task'"),
        (["train", "nope", "--out", "/tmp/x"], "unknown task"),
        (["evaluate", "ecg-rhythm", "--data", "/nonexistent/folder"], "does not exist"),
        (["export", "/nonexistent/run"], "not a finished training run"),
        (["models", "activate", "ecg-rhythm", "ecg-rhythm:doesnotexist"], "not found"),
    ],
)
def test_user_errors_exit_2(args: list[str], words: str) -> None:
    code, out = run(*args)
    assert code == 2, out
    assert words in out
    assert "Traceback" not in out


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    code, out = run("evaluate", "ecg-rhythm", "--data", str(tmp_path))
    assert code == 2
    assert "REFERENCE.csv" in out


def test_corrupt_model_file(tiny_model: object, synthetic_cinc: Path) -> None:
    onnx = tiny_model.onnx_path  # type: ignore[attr-defined]
    onnx.write_bytes(onnx.read_bytes()[:1000])
    code, out = run("evaluate", "ecg-rhythm", "--data", str(synthetic_cinc))
    assert code == 2
    assert "does not match its card" in out


def test_models_list_fresh_home_shows_shipped_model() -> None:
    from prescreen.models.store import SHIPPED_DIR

    if not (SHIPPED_DIR / "ecg-rhythm" / "card.json").is_file():
        pytest.skip("no shipped model in this checkout")
    code, out = run("models", "list")
    assert code == 0
    assert "ecg-rhythm" in out and "yes" in out


def test_image_task_layout_errors(tmp_path: Path) -> None:
    (tmp_path / "benign").mkdir()
    code, out = run("evaluate", "breast-us", "--data", str(tmp_path))
    assert code == 2
    assert "missing sub-folder(s) normal, malignant" in out
    (tmp_path / "x.npz").write_bytes(b"not an npz")
    code, out = run("evaluate", "chest-xray", "--data", str(tmp_path / "nothing.npz"))
    assert code == 2 and "does not exist" in out


def test_evaluate_chest_xray_npz_uses_val_split(
    image_models: dict[str, object], synthetic_npz: Path, tmp_path: Path
) -> None:
    import json

    out = tmp_path / "eval.json"
    code, text = run("evaluate", "chest-xray", "--data", str(synthetic_npz), "--json", str(out))
    assert code == 0, text
    doc = json.loads(out.read_text())
    assert doc["task"] == "chest-xray" and doc["dataset"]["n"] == 24  # the val_* arrays
    assert doc["classes"] == ["normal", "pneumonia"]
    m = doc["metrics"]["accuracy"]
    assert m["ci_low"] <= m["value"] <= m["ci_high"]


def test_invalid_options_and_corrupt_state_exit_2(isolated_home: Path) -> None:
    code, out = run("train", "ecg-rhythm", "--out", str(isolated_home / "r"), "--epochs", "0")
    assert code == 2 and "epochs" in out and "Traceback" not in out
    (isolated_home / "active.json").write_text("{")
    code, out = run("models", "list")
    assert code == 2 and "active.json" in out and "corrupt" in out
