"""In-service monitoring in a real ``prescreen serve``: ``GET /v1/monitoring`` is 401 without a
token and 200 with one; an induced drift (the active ECG card's reference says the validation
scores were low, and an AF record scores high) raises an alarm that a real local HTTP receiver
gets; a report signed with the physician's label moves the served figures; the page renders."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prescreen.models.card import ScoreReference
from prescreen.models.model_store import ModelStore
from tests.e2e.conftest import CLI, free_port, serve_command, start_process, stop_process
from tests.e2e.test_pages_browser import first_record, upload, wait_in_worklist
from tests.pipeline.test_monitoring import Receiver, receiver

__all__ = ["receiver"]  # the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.data]

PASSWORDS = {"liwei": "reads-ecgs-daily", "zhangsan": "cosigns-reports"}


def add_user(env: dict[str, str], name: str, login: str, grade: str) -> None:
    args = ["--name", name, "--login", login, "--grade", grade, "--specialty", "cardiology", "--password-stdin"]
    done = subprocess.run(
        [*CLI, "users", "add", *args],
        input=PASSWORDS[login] + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def token(base: str, login: str) -> dict[str, str]:
    r = httpx.post(f"{base}/v1/auth/token", data={"username": login, "password": PASSWORDS[login]}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def wait_for_alarm(received: list[dict[str, Any]], log: Path, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alarms = [r for r in received if r.get("event") == "alarm"]
        if alarms:
            return alarms[0]
        time.sleep(0.2)
    raise AssertionError(f"no alarm reached the webhook\n{log.read_text(errors='replace')[-3000:]}")


def test_monitoring_served(shared_data: Path, cli_env: dict[str, str], tmp_path: Path, receiver: Receiver) -> None:
    # the shipped ECG model, active in this home, with a reference distribution of low scores
    model = ModelStore().active("ecg-rhythm")
    reference = ScoreReference(edges=[0.0, 0.5, 1.0], proportions=[0.95, 0.05], n=1000, measured_on="test")
    model.card.model_copy(update={"score_reference": reference}).save(model.path / "card.json")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **cli_env,
        "PRESCREEN_DICOM_PORT": str(free_port()),
        "PRESCREEN_STUDY_QUIET_SECONDS": "1",
        "PRESCREEN_WORKER_POLL_SECONDS": "0.2",
        "PRESCREEN_MONITORING_WINDOW": "1",
        "PRESCREEN_MONITORING_MIN_LABELLED": "1",
        "PRESCREEN_MONITORING_INTERVAL_SECONDS": "0.5",
        "PRESCREEN_ESCALATION_WEBHOOK": receiver.url,
    }
    add_user(env, "Li Wei", "liwei", "attending")
    add_user(env, "Zhang San", "zhangsan", "associate_chief")
    log = tmp_path / "serve.log"
    proc = start_process(serve_command(port), env, log, f"{base}/readyz")
    try:
        r = httpx.get(f"{base}/v1/monitoring", timeout=30)
        assert r.status_code == 401 and r.json()["error"] == "not_authenticated"
        liwei, zhangsan = token(base, "liwei"), token(base, "zhangsan")
        r = httpx.get(f"{base}/v1/monitoring", headers=liwei, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["groups"] == [] and [m["task"] for m in r.json()["models"]] == sorted(
            m["task"] for m in r.json()["models"]
        )

        study_id = upload(base, shared_data, first_record(shared_data, "A"), ("Demo^Patient", "DEMO-0001"))
        item = wait_in_worklist(base, liwei["Authorization"].split()[1], study_id, log)
        alarm = wait_for_alarm(receiver.received, log)
        assert (alarm["kind"], alarm["task"], alarm["institution"]) == (
            "score_drift",
            "ecg-rhythm",
            "Demo Heart Clinic",
        )
        assert alarm["figures"]["psi"] > 0.25 and "DEMO-0001" not in str(alarm) and "Demo^Patient" not in str(alarm)

        for _ in range(50):  # the step marks it delivered once the receiver answered
            body = httpx.get(f"{base}/v1/monitoring?task=ecg-rhythm", headers=liwei, timeout=30).json()
            if body["alarms"] and body["alarms"][0]["notified"]:
                break
            time.sleep(0.1)
        (overall,) = [g for g in body["groups"] if g["scope"] == "overall"]
        assert (overall["studies"], overall["labelled"]) == (1, 0)
        assert [(a["kind"], a["resolved_at"], a["notified"]) for a in body["alarms"]] == [("score_drift", None, True)]

        item_url = f"{base}/v1/worklist-items/{item['id']}"
        assert httpx.post(f"{item_url}/claim", headers=liwei, timeout=30).status_code == 200
        draft = {"text": "Atrial fibrillation.", "ai_agrees": True, "physician_label": "af"}
        assert httpx.post(f"{item_url}/draft", headers=liwei, json=draft, timeout=30).status_code == 200
        assert httpx.post(f"{item_url}/sign", headers=liwei, timeout=30).json()["state"] == "awaiting_review"
        assert httpx.post(f"{item_url}/sign", headers=zhangsan, timeout=30).json()["state"] == "final"

        body = httpx.get(f"{base}/v1/monitoring?task=ecg-rhythm", headers=liwei, timeout=30).json()
        (overall,) = [g for g in body["groups"] if g["scope"] == "overall"]
        assert (overall["labelled"], overall["accuracy"]["value"], overall["accuracy"]["n"]) == (1, 1.0, 1)
        assert overall["confusion"]["tp"] == 1

        with httpx.Client(base_url=base, timeout=30) as browser:
            signed = browser.post("/ui/login", data={"login": "liwei", "password": PASSWORDS["liwei"]})
            assert signed.status_code in (200, 303)
            page = browser.get("/ui/models")
            assert page.status_code == 200 and "评分漂移" in page.text and "Demo Heart Clinic" in page.text
            assert 'class="plot plot-trend"' in page.text
    finally:
        stop_process(proc)
