"""``GET /metrics`` of a real ``prescreen serve`` process: BentoML's own request series and the
``prescreen_*`` series counted in the database, which follow a CinC ECG uploaded to ``/v1/studies``
and screened by the queue; no patient identifier appears in them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.data]

PATIENT = "P-METRICS-0042"


def scrape(base: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    r = httpx.get(f"{base}/metrics", timeout=30)  # no token: served as BentoML serves it
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    return r.text, samples


def test_metrics_follow_a_screened_ecg(server: str, shared_data: Path) -> None:
    task = (("task", "ecg-rhythm"),)
    _, before = scrape(server)
    assert before[("prescreen_metrics_store_up", ())] == 1
    assert before[("prescreen_studies_screened_total", task)] == 0  # the active task shows at zero
    assert before[("prescreen_studies_received_total", ())] == 0

    cinc = shared_data / "cinc2017"
    record = (cinc / "RECORDS").read_text().split()[0]
    files = [
        (f"{record}.hea", (cinc / f"{record}.hea").read_bytes()),
        (f"{record}.dat", (cinc / f"{record}.dat").read_bytes()),
    ]
    r = httpx.post(
        f"{server}/v1/studies",
        files=[("file", f) for f in files],
        data={"institution": "clinic-7", "patient_id": PATIENT},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    study_id = r.json()["study_id"]

    def finished() -> dict[str, Any] | None:
        detail: dict[str, Any] = httpx.get(f"{server}/v1/studies/{study_id}", timeout=30).json()
        return detail if detail["status"] in ("screened", "failed", "unscreenable") else None

    assert wait_until(finished, timeout=90, what="the study screened")["status"] == "screened"
    text, after = scrape(server)
    assert after[("prescreen_studies_received_total", ())] == 1
    assert after[("prescreen_studies_screened_total", task)] == 1
    assert after[("prescreen_studies", (("status", "screened"),))] == 1
    assert after[("prescreen_screening_seconds_count", task)] == 1
    assert after[("prescreen_jobs_finished_total", (("state", "done"),))] == 1
    assert after[("prescreen_queue_jobs", (("state", "pending"),))] == 0
    flagged = after[("prescreen_flags_total", (("operating_point", "balanced"), *task))]
    assert flagged <= after[("prescreen_flags_total", (("operating_point", "safety"), *task))] <= 1
    prescreen_names = {name for name, _ in after if name.startswith("prescreen_")}
    assert len(prescreen_names) >= 10, sorted(prescreen_names)
    assert any(name.startswith("bentoml_") for name, _ in after), "BentoML's own request metrics are gone"
    # BentoML labels requests by path: the study's id is taken out of it (and nothing else names it)
    assert PATIENT not in text and "clinic-7" not in text and study_id not in text
    endpoints = {dict(labels).get("endpoint") for name, labels in after if name.startswith("bentoml_")}
    assert {"/v1/studies", "/v1/studies/{id}"} <= endpoints, sorted(e for e in endpoints if e)
