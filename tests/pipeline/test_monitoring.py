"""The monitoring step: an induced drift raises an alarm that reaches a real local HTTP receiver
once; a failing receiver is retried with a doubling delay; the card lookup; the runtime's loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from prescreen.config import Settings
from prescreen.errors import ModelError
from prescreen.evaluation.monitoring import SCORE_DRIFT, MonitoringPolicy
from prescreen.models.card import ModelCard
from prescreen.pipeline.monitoring import ModelCards, MonitoringStep, retry_due
from prescreen.pipeline.runtime import start_runtime
from prescreen.store.blobs import BlobStore
from prescreen.store.monitoring import pending_alarms
from tests.store.test_monitoring import CARDS, drift_run, ecg_card
from tests.store.test_worklist import Sessions

POLICY = MonitoringPolicy(window=6, psi_threshold=0.25, min_labelled=5)


@dataclass
class Receiver:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers to give, in order; then 204


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.raw.append(body)
            state.received.append(json.loads(body))
            self.send_response(state.statuses.pop(0) if state.statuses else 204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()


def step(sessions: Sessions, webhook: str | None) -> MonitoringStep:
    return MonitoringStep(sessions, lambda versions: CARDS, POLICY, webhook)


def test_an_induced_drift_reaches_the_webhook_once(sessions: Sessions, blobs: BlobStore, receiver: Receiver) -> None:
    monitoring = step(sessions, receiver.url)
    assert monitoring.check() == [] and receiver.received == []
    drift_run(sessions, blobs, [0.95] * 6)
    assert monitoring.run_once() is False
    (sent,) = receiver.received
    assert set(sent) == {"event", "id", "kind", "task", "model_version", "institution", "message", "figures", "at"}
    assert (sent["event"], sent["kind"], sent["task"], sent["model_version"], sent["institution"]) == (
        "alarm",
        SCORE_DRIFT,
        "ecg-rhythm",
        "1",
        "clinic-7",
    )
    assert sent["figures"]["psi"] > 0.25 and sent["figures"]["n"] == 6 and sent["figures"]["window"] == 6
    assert b"P-" not in receiver.raw[0] and b"patient" not in receiver.raw[0]  # figures, no patient data
    with sessions() as s:
        assert pending_alarms(s, max_attempts=10) == []
    monitoring.check()
    monitoring.check()
    assert len(receiver.received) == 1  # still drifting: nothing new to send


def test_a_failing_webhook_is_retried_with_a_growing_delay(
    sessions: Sessions, blobs: BlobStore, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    monitoring = step(sessions, receiver.url)
    drift_run(sessions, blobs, [0.95] * 6)
    (raised,) = monitoring.check()
    at = datetime.fromisoformat(raised["at"])
    assert len(receiver.received) == 1  # tried at once, refused
    with sessions() as s:
        (pending,) = pending_alarms(s, max_attempts=20)
    assert (pending["attempts"], pending["notified"]) == (1, False)

    assert monitoring.notify_pending(now=at + timedelta(seconds=30)) == 0 and len(receiver.received) == 1
    assert monitoring.notify_pending(now=at + timedelta(seconds=61)) == 0 and len(receiver.received) == 2  # 503
    assert monitoring.notify_pending(now=at + timedelta(seconds=150)) == 0  # next one after 1 + 2 min
    assert monitoring.notify_pending(now=at + timedelta(seconds=181)) == 1 and len(receiver.received) == 3
    assert [r["id"] for r in receiver.received] == [raised["id"]] * 3
    with sessions() as s:
        assert pending_alarms(s, max_attempts=20) == []


def test_a_dead_webhook_is_not_fatal(sessions: Sessions, blobs: BlobStore) -> None:
    drift_run(sessions, blobs, [0.95] * 6)
    monitoring = MonitoringStep(sessions, lambda versions: CARDS, POLICY, "http://127.0.0.1:9/nothing", max_attempts=1)
    assert len(monitoring.check()) == 1
    with sessions() as s:
        assert pending_alarms(s, max_attempts=1) == []  # its one attempt is spent
        assert [a["attempts"] for a in pending_alarms(s, max_attempts=5)] == [1]


def test_without_a_webhook_alarms_are_only_stored(sessions: Sessions, blobs: BlobStore) -> None:
    drift_run(sessions, blobs, [0.95] * 6)
    assert len(step(sessions, None).check()) == 1
    with sessions() as s:
        assert [a["attempts"] for a in pending_alarms(s, max_attempts=5)] == [0]


T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempts", "after", "due"),
    [
        (0, timedelta(0), True),
        (1, timedelta(seconds=59), False),
        (1, timedelta(minutes=1), True),
        (2, timedelta(minutes=2), False),
        (2, timedelta(minutes=3), True),
        (3, timedelta(minutes=7), True),
        (7, timedelta(minutes=122), False),  # 1+2+4+8+16+32+60 = 123 min: the 7th delay capped at an hour
        (7, timedelta(minutes=123), True),
    ],
)
def test_retry_delays_double_up_to_an_hour(attempts: int, after: timedelta, due: bool) -> None:
    assert retry_due(T0, attempts, T0 + after) is due


class FakeStore:
    def __init__(self, cards: dict[str, ModelCard]) -> None:
        self.cards = cards
        self.calls: list[str] = []

    def get(self, tag: str) -> Any:
        self.calls.append(tag)
        if tag not in self.cards:
            raise ModelError(f"model {tag} not found in the model store")
        return type("Stored", (), {"card": self.cards[tag]})()


def test_model_cards_from_the_active_models_then_the_store() -> None:
    active, older = ecg_card(), ecg_card().model_copy(update={"version": "0"})
    store = FakeStore({"fake-ecg-rhythm:0": older})
    cards = ModelCards(lambda: {"1": active}, store, ttl_seconds=3600)
    versions = [("ecg-rhythm", "fake-ecg-rhythm", "0"), ("ecg-rhythm", "fake-ecg-rhythm", "1"), ("x", "gone", "9")]
    assert cards(versions) == {"0": older, "1": active}
    assert cards(versions) == {"0": older, "1": active}
    assert store.calls == ["fake-ecg-rhythm:0", "gone:9"]  # looked up once each, the active one never
    engine = type("Engine", (), {"models": {"ecg-rhythm": type("M", (), {"card": active})()}, "store": store})()
    assert ModelCards.of_engine(engine)([("ecg-rhythm", "fake-ecg-rhythm", "1")]) == {"1": active}
    assert ModelCards.of_engine(None)(versions) == {}


def test_the_runtime_runs_a_monitoring_loop(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", worker_threads=0, dicom_port=0, monitoring_interval_seconds=3600)

    def screen(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing to screen")

    runtime = start_runtime(settings, screen, listen=False)
    try:
        loops = {loop.name: loop for loop in runtime.loops}
        assert "monitoring" in loops and loops["monitoring"].alive
        assert loops["monitoring"].poll_seconds == 3600
        (monitoring,) = loops["monitoring"].steps
        assert isinstance(monitoring, MonitoringStep) and monitoring.policy == MonitoringPolicy.from_settings(settings)
    finally:
        runtime.stop()
