"""Shadow mode on a live server: a real ``prescreen serve`` process; the shadow set with the real CLI
while it runs (no restart); a CinC 2017 ECG posted to ``/v1/studies`` is screened by the active
model and, beside it, by the shadow; ``GET /v1/models/ecg-rhythm/shadow`` and the page compare them;
``--off`` stops it; each change is recorded in ``model_events``.

The shadow is the shipped ECG model's ONNX file stored again as ``ecg-candidate`` with an operating
threshold of 0: it flags every study, while the active model clears A00001 (a normal record)."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prescreen.models.card import ModelCard
from prescreen.models.model_store import SHIPPED_DIR, ModelStore
from tests.e2e.conftest import CLI, run_cli
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.data]

ECG = "ecg-rhythm"
PASSWORD = "correct horse battery staple"
READER = ["--grade", "attending", "--specialty", "cardiology", "--password-stdin"]


def post_record(base: str, cinc: Path, record: str) -> str:
    files = [("file", (f"{record}{ext}", (cinc / f"{record}{ext}").read_bytes())) for ext in (".hea", ".dat")]
    r = httpx.post(f"{base}/v1/studies", files=files, data={"patient_id": "PID-SHADOW"}, timeout=60)
    assert r.status_code == 202, r.text
    study_id: str = r.json()["study_id"]
    return study_id


def screened(base: str, study_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        detail: dict[str, Any] = httpx.get(f"{base}/v1/studies/{study_id}", timeout=10).json()
        return detail if detail["status"] in ("screened", "unscreenable", "failed") else None

    detail = wait_until(done, 90, 0.5, f"study {study_id} not screened")
    assert detail is not None and detail["status"] == "screened", detail
    return detail


def shadow_report(base: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/models/{ECG}/shadow", timeout=10)
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    return report


def events(home: Path) -> list[tuple[str, str, str, str | None, str]]:
    with sqlite3.connect(f"file:{home / 'prescreen.db'}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute("select task, action, tag, previous_tag, actor from model_events order by at").fetchall()
    return [(str(t), str(a), str(tag), prev, str(actor)) for t, a, tag, prev, actor in rows]


def test_shadow_findings_beside_active_ones_on_a_live_server(
    server: str, cli_env: dict[str, str], isolated_home: Path, shared_data: Path
) -> None:
    cinc = shared_data / "cinc2017"
    env = {**cli_env, "PRESCREEN_ACTOR": "e2e-tester"}
    store = ModelStore()  # the server's home: the same model store
    active = store.active(ECG).tag
    card = ModelCard.load(SHIPPED_DIR / ECG / "card.json")
    candidate = store.add(
        SHIPPED_DIR / ECG / "model.onnx",
        card.model_copy(update={"name": "ecg-candidate", "operating_threshold": 0.0, "operating_points": {}}),
    ).tag
    off = shadow_report(server)
    assert (off["task"], off["active_model"], off["shadow_model"], off["comparisons"]) == (ECG, active, None, [])

    # refusals: one line, exit 2, nothing changed
    for args in ([ECG, "ecg-rhythm:nope"], [ECG]):  # more refusals: tests/pipeline/test_shadow_screening.py
        r = run_cli("models", "shadow", *args, env=env)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stdout, r.stderr)
    r = run_cli("models", "shadow", ECG, candidate, env=env)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1, r.stdout + r.stderr
    assert candidate in r.stdout

    study_id = post_record(server, cinc, "A00001")  # the server was not restarted
    detail = screened(server, study_id)
    [series] = detail["series"]
    assert series["result"]["model"] == {"name": ECG, "version": active.split(":")[1]}  # routed by the active one

    def compared() -> dict[str, Any] | None:
        report = shadow_report(server)
        return report if report["comparisons"] and report["comparisons"][0]["n"] == 1 else None

    report = wait_until(compared, 30, 0.5, lambda: f"no shadow comparison: {shadow_report(server)}")
    assert report is not None
    assert (report["active_model"], report["shadow_model"]) == (active, candidate)
    [c] = report["comparisons"]
    assert c["shadow_model"] == candidate and c["labelled"] == 0
    assert c["active"]["models"] == [active] and c["shadow"]["models"] == [candidate]
    assert c["active"]["flag_rate"]["n"] == 1 and c["shadow"]["flag_rate"]["n"] == 1
    assert c["active"]["flag_rate"]["value"] == 0.0 and c["shadow"]["flag_rate"]["value"] == 1.0
    assert c["agreement"]["value"] == 0.0 and c["agreement"]["ci_low"] == 0.0
    assert c["active"]["latency_mean_s"] > 0 and c["shadow"]["latency_p95_s"] > 0
    assert c["active"]["accuracy"] == {"n": 0, "value": None, "ci_low": None, "ci_high": None}
    assert httpx.get(f"{server}/v1/models/ct-head/shadow", timeout=10).status_code == 404

    # the page, for a signed-in reader
    added = subprocess.run(
        [*CLI, "users", "add", "--name", "Li Wei", "--login", "liwei", *READER],
        input=PASSWORD + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    with httpx.Client(base_url=server, timeout=10) as browser:
        assert browser.get(f"/ui/models/{ECG}/shadow").status_code == 303  # to the login form
        browser.post("/ui/login", data={"login": "liwei", "password": PASSWORD, "next": "/ui/"})
        page = browser.get(f"/ui/models/{ECG}/shadow")
        assert page.status_code == 200, page.text
        assert "影子模式" in page.text and candidate in page.text and "标记一致率" in page.text

    r = run_cli("models", "shadow", ECG, "--off", env=env)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1, r.stdout + r.stderr
    screened(server, post_record(server, cinc, "A00002"))
    time.sleep(2)  # the shadow would have run at the worker's next turn
    after = shadow_report(server)
    assert after["shadow_model"] is None and after["comparisons"][0]["n"] == 1
    assert events(isolated_home) == [
        (ECG, "shadow_on", candidate, None, "e2e-tester"),
        (ECG, "shadow_off", candidate, candidate, "e2e-tester"),
    ]
