"""The triage step: screened studies become items, and escalations reach the webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from prescreen.pipeline.triage import TriageStep
from prescreen.store.blobs import BlobStore
from prescreen.triage.priority import SlaTargets
from prescreen.triage.rules import load_default_rules
from tests.store.test_worklist import Sessions, ecg, items_of, screen_study, utcnow


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def test_triage_step_routes_and_escalates_once_to_the_webhook(
    sessions: Sessions, blobs: BlobStore, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    # urgent ECG received 100 min ago: 83 % of its 2 h target
    study_id = screen_study(sessions, blobs, ecg("other", 0.7), received_at=utcnow() - timedelta(minutes=100))
    triage = TriageStep(sessions, load_default_rules(), SlaTargets(), webhook=url)
    triage.run_once()
    [item] = items_of(sessions, study_id)
    assert (item.worklist, item.priority, item.escalation) == ("cardiology", "urgent", 75)
    assert received == [
        {"event": "escalation", "item_id": item.id, "worklist": "cardiology", "level": 75, "priority": "urgent"}
    ]
    triage._last_escalation = 0.0  # the next step escalates again: nothing new to send
    triage.run_once()
    assert len(received) == 1


def test_a_dead_webhook_does_not_stop_triage(sessions: Sessions, blobs: BlobStore) -> None:
    study_id = screen_study(sessions, blobs, ecg("other", 0.7), received_at=utcnow() - timedelta(minutes=130))
    TriageStep(sessions, load_default_rules(), SlaTargets(), webhook="http://127.0.0.1:9/nothing").run_once()
    [item] = items_of(sessions, study_id)
    assert item.escalation == 100
