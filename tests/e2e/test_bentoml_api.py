"""The BentoML API of the service itself (not the mounted FastAPI app), through a real
``prescreen serve`` process: ``POST /tasks`` lists the tasks that have an active model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

SHIPPED = Path(__file__).resolve().parents[2] / "prescreen" / "shipped"


def test_tasks_lists_the_tasks_with_an_active_model(server: str) -> None:
    # a fresh home: every shipped model is imported and made active when the service starts
    shipped = sorted(json.loads(card.read_text())["task"] for card in SHIPPED.glob("*/card.json"))
    assert shipped, "no shipped model found"
    r = httpx.post(f"{server}/tasks", json={}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == shipped
