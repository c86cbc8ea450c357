"""Ambulatory ECG through a real ``prescreen serve``: a 30-minute MIT-BIH record sent to ``/v1/screen``
is routed to holter by its length and answered with the beat summary and its events; a 30-second
strip still goes to ecg-rhythm; the same record sent to ``/v1/studies`` is screened in the queue and
its stored finding carries the summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.data]
RECORD = "101"


def record_files(folder: Path, name: str) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (f"{name}.{ext}", (folder / f"{name}.{ext}").read_bytes())) for ext in ("hea", "dat")]


def check_summary(summary: dict[str, Any], duration: float) -> None:
    beats = summary["beats"]
    assert set(beats) == {"N", "S", "V", "F", "Q"} and all(isinstance(v, int) for v in beats.values())
    assert 1500 < sum(beats.values()) < 2500  # record 101 holds 1,865 annotated beats
    rate = summary["heart_rate"]
    assert 30 < rate["min"]["bpm"] <= rate["mean"] <= rate["max"]["bpm"] < 200
    assert 0 <= rate["min"]["at_s"] <= duration and 0 <= rate["max"]["at_s"] <= duration
    assert summary["duration_s"] == pytest.approx(duration, abs=1)
    for event in summary["events"]:
        assert 0 <= event["start_s"] <= event["end_s"] <= duration and event["detail"]


def test_a_long_record_is_analysed_as_holter_and_a_strip_stays_rhythm(server: str, shared_data: Path) -> None:
    mitdb = shared_data / "mitdb"
    r = httpx.post(f"{server}/v1/screen", files=record_files(mitdb, RECORD), timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "holter" and body["model"]["name"]
    check_summary(body["summary"], 650000 / 360)
    assert body["flagged"] == (body["score"] >= body["threshold"])
    assert set(body["operating_points"]) == {"balanced", "safety"}
    assert set(body["probabilities"]) <= {"N", "S", "V", "F", "Q"}

    name = (shared_data / "cinc2017" / "REFERENCE.csv").read_text().splitlines()[0].split(",")[0]
    r = httpx.post(f"{server}/v1/screen", files=record_files(shared_data / "cinc2017", name), timeout=120)
    assert r.status_code == 200 and r.json()["task"] == "ecg-rhythm" and "summary" not in r.json()

    r = httpx.post(f"{server}/v1/studies", files=record_files(mitdb, RECORD), timeout=120)
    assert r.status_code == 202, r.text
    study_id = r.json()["study_id"]
    deadline = time.monotonic() + 240
    detail: dict[str, Any] = {}
    while time.monotonic() < deadline:
        detail = httpx.get(f"{server}/v1/studies/{study_id}", timeout=30).json()
        if detail["status"] in ("screened", "failed", "unscreenable"):
            break
        time.sleep(1)
    assert detail["status"] == "screened", detail
    (series,) = detail["series"]
    assert series["result"]["task"] == "holter" and series["progress"] is None
    check_summary(series["result"]["summary"], 650000 / 360)
