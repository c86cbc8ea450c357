"""CLI user errors: one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--checkpoint", "worst"], "'best' or 'last'"),
        (["--test-fraction", "0.7"], "less than 0.5"),
        (["--folds", "2", "--nested"], "--nested needs --folds 3 or more"),
    ],
)
def test_train_options_out_of_range_exit_2_before_training(tmp_path: Path, option: list[str], words: str) -> None:
    code, out = run("train", "ecg-rhythm", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *option)
    assert code == 2, out
    assert words in out
    assert not (tmp_path / "run").exists()


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
    from prescreen.models.model_store import SHIPPED_DIR

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
    # both of the card's operating points; `metrics` is the balanced one's decision
    points = doc["operating_points"]
    assert set(points) == {"balanced", "safety"}
    assert points["balanced"]["threshold"] == doc["threshold"]
    for k in ("accuracy", "sensitivity", "specificity"):
        assert points["balanced"]["metrics"][k]["value"] == doc["metrics"][k]["value"]
    assert points["safety"]["threshold"] <= points["balanced"]["threshold"]
    assert points["safety"]["flagged_share"] >= points["balanced"]["flagged_share"]
    assert 0 < doc["dataset"]["flag_prevalence"] < 1
    assert "at the model's operating points" in text and "Balanced accuracy" in text


def test_invalid_options_and_corrupt_state_exit_2(isolated_home: Path) -> None:
    code, out = run("train", "ecg-rhythm", "--out", str(isolated_home / "r"), "--epochs", "0")
    assert code == 2 and "epochs" in out and "Traceback" not in out
    (isolated_home / "active.json").write_text("{")
    code, out = run("models", "list")
    assert code == 2 and "active.json" in out and "corrupt" in out


BAD_RULES = """rules:
  - name: ecg
    match:
      task: ecg-rhythm
    worklist: cardiology
    priority: routine
  - name: chest
    match:
      task: chest-xray
    worklist: thoracic-radiology
    priority: asap
"""


def test_rules_check_accepts_the_shipped_rules_and_names_the_bad_line(tmp_path: Path) -> None:
    from prescreen.triage.rules import default_rules_path

    code, out = run("rules", "check", str(default_rules_path()))
    assert code == 0, out
    assert "cardiology" in out and "ok:" in out
    bad = tmp_path / "rules.yaml"
    bad.write_text(BAD_RULES)
    code, out = run("rules", "check", str(bad))
    assert code == 2
    assert "line 11" in out and "chest" in out and "asap" in out


def test_serve_refuses_to_start_on_an_invalid_rules_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prescreen.config import get_settings

    bad = tmp_path / "rules.yaml"
    bad.write_text(BAD_RULES)
    monkeypatch.setenv("PRESCREEN_RULES_PATH", str(bad))
    get_settings.cache_clear()
    try:
        code, out = run("serve", "--port", "1")
    finally:
        get_settings.cache_clear()
    assert code == 2
    assert "chest" in out and "line 11" in out


def test_users_add_reads_the_password_from_stdin_and_refuses_bad_input() -> None:
    result = runner.invoke(
        app,
        [
            "users",
            "add",
            "--name",
            "Li Wei",
            "--login",
            "liwei",
            "--grade",
            "attending",
            "--specialty",
            "cardiology",
            "--password-stdin",
        ],
        input="pw-attending-1\n",
    )
    assert result.exit_code == 0, result.output
    assert "liwei" in result.output
    again = runner.invoke(
        app,
        [
            "users",
            "add",
            "--name",
            "L W",
            "--login",
            "liwei",
            "--grade",
            "attending",
            "--specialty",
            "cardiology",
            "--password-stdin",
        ],
        input="pw-attending-2\n",
    )
    assert again.exit_code == 2 and "taken" in again.output
    bad_grade = runner.invoke(
        app,
        [
            "users",
            "add",
            "--name",
            "X",
            "--login",
            "x1",
            "--grade",
            "professor",
            "--specialty",
            "cardiology",
            "--password-stdin",
        ],
        input="long-password\n",
    )
    assert bad_grade.exit_code == 2 and "grade" in bad_grade.output
    listing = runner.invoke(app, ["users", "list"])
    assert listing.exit_code == 0 and "Li Wei" in listing.output and "pw-attending" not in listing.output


def _add(*args: str, password: str = "a-long-password-1") -> Any:
    return runner.invoke(app, ["users", "add", *args, "--password-stdin"], input=password + "\n")


def test_users_roles_are_separated_and_passwords_follow_the_policy() -> None:
    assert _add("--name", "Sun Li", "--login", "sunli", "--role", "admin").exit_code == 0
    for mix in (["admin", "auditor"], ["admin", "security_admin"], ["security_admin", "auditor"]):
        roles = [part for role in mix for part in ("--role", role)]
        refused = _add("--name", "Zhou Bo", "--login", "zhoubo", *roles)
        assert refused.exit_code == 2 and "三员分立" in refused.output, refused.output
    assert _add("--name", "R", "--login", "r1", "--role", "reader").exit_code == 2  # a reader needs a grade
    reader = ["--name", "Li Wei", "--login", "liwei", "--grade", "attending", "--specialty", "cardiology"]
    for weak, why in (("short-pw", "12 characters"), ("liwei-is-my-password", "login"), ("password1234", "common")):
        refused = _add(*reader, password=weak)
        assert refused.exit_code == 2 and why in refused.output, refused.output
    assert _add(*reader, "--institution", "clinic-7", "--institution", "clinic-9").exit_code == 0
    moved = runner.invoke(app, ["users", "set-roles", "sunli", "--role", "auditor"])
    assert moved.exit_code == 0 and "auditor" in moved.output
    listing = runner.invoke(app, ["users", "list"])
    assert "clinic-7, clinic-9" in listing.output and "auditor" in listing.output
    assert runner.invoke(app, ["users", "disable", "liwei"]).exit_code == 0
    assert runner.invoke(app, ["users", "unlock", "liwei"]).exit_code == 0
    reset = runner.invoke(app, ["users", "reset-password", "liwei", "--password-stdin"], input="another-long-one\n")
    assert reset.exit_code == 0
    assert runner.invoke(app, ["users", "disable", "nobody"]).exit_code == 2


def test_clients_print_the_key_once_and_the_audit_trail_verifies_then_detects_a_change(tmp_path: Path) -> None:
    added = runner.invoke(
        app,
        [
            "clients",
            "add",
            "--name",
            "pacs-clinic7",
            "--institution",
            "clinic-7",
            "--ae",
            "PACS7",
            "--ip",
            "10.7.0.0/16",
        ],
    )
    assert added.exit_code == 0, added.output
    key = added.output.strip().splitlines()[-1]
    assert key.startswith("psk_") and len(key) > 40
    listing = runner.invoke(app, ["clients", "list"])
    assert "pacs-clinic7" in listing.output and "10.7.0.0/16" in listing.output and key not in listing.output
    assert runner.invoke(app, ["clients", "add", "--name", "x", "--institution", "c", "--ip", "nope"]).exit_code == 2
    assert runner.invoke(app, ["clients", "revoke", "pacs-clinic7"]).exit_code == 0
    saved = tmp_path / "checkpoint.json"
    signed = runner.invoke(app, ["audit", "checkpoint", "--out", str(saved)])
    assert signed.exit_code == 0 and '"signature"' in saved.read_text()
    ok = runner.invoke(app, ["audit", "verify", "--from-checkpoint", str(saved)])
    assert ok.exit_code == 0 and "ok:" in ok.output, ok.output
    exported = tmp_path / "audit.log"
    assert runner.invoke(app, ["audit", "export", "--out", str(exported)]).exit_code == 0
    lines = exported.read_text(encoding="utf-8").splitlines()
    assert lines and all(line.startswith("<8") and " DICOM+RFC3881 " in line for line in lines)
    import sqlite3

    from prescreen.config import get_settings

    with sqlite3.connect(get_settings().home / "prescreen.db") as db:
        db.execute("update audit_events set actor = actor || 'x' where seq = 2")
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1 and "record 2" in broken.output, broken.output
