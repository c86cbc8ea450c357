"""The worklist REST API over a migrated SQLite: sign in, worklists, items, reader actions, statistics.

Items are made the way production makes them (store, screen, ``triage_pending``); readers are
created with ``add_user`` and sign in through ``/v1/auth/token``. Checks status codes and bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import get_settings
from prescreen.serving.app import create_app
from prescreen.store import users as users_module
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.users import add_user
from tests.store.test_worklist import Screen, breast_us, ecg, one_item, screen_study, triage

PASSWORD = "pw-long-enough"
ITEM_KEYS = {"id", "state", "label", "score", "due_at", "seconds_to_due", "effective_priority"}


@dataclass
class Api:
    client: TestClient
    sessions: sessionmaker[Session]
    blobs: FileBlobStore
    headers: dict[str, dict[str, str]]  # by login
    ids: dict[str, str]  # user id by login

    def item(self, *specs: Screen, order_priority: str | None = None) -> str:
        study_id = screen_study(self.sessions, self.blobs, *specs, order_priority=order_priority)
        assert triage(self.sessions) == 1
        return one_item(self.sessions, study_id).id

    def post(self, login: str | None, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        response = self.client.post(path, headers=self.headers.get(login or "", {}), **kwargs)
        return response.status_code, response.json()

    def get(self, login: str | None, path: str) -> tuple[int, dict[str, Any]]:
        response = self.client.get(path, headers=self.headers.get(login or "", {}))
        return response.status_code, response.json()

    def step_up(self, login: str) -> str:
        """Enrol ``login`` in TOTP and give a second factor now; returns the secret."""
        status, body = self.post(login, "/v1/auth/totp/enroll")
        assert status == 200, body
        secret = body["secret"]
        status, body = self.post(login, "/v1/auth/totp/confirm", json={"totp": pyotp.TOTP(secret).now()})
        assert status == 200, body
        return str(secret)


READERS = {
    # login: (grade, specialties)
    "ann.attending": ("attending", ["cardiology"]),
    "bob.attending": ("attending", ["cardiology"]),
    "cy.assoc": ("associate_chief", ["cardiology"]),
    "dee.resident": ("resident", ["cardiology"]),
    "eve.sono": ("attending", ["sonography"]),
}


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    app = create_app()
    app.state.ingestor = Ingestor(session_factory(make_engine(url)), FileBlobStore(tmp_path / "blobs"))
    sessions = app.state.ingestor.sessions
    client = TestClient(app)
    headers: dict[str, dict[str, str]] = {}
    ids: dict[str, str] = {}
    for login, (grade, specialties) in READERS.items():
        user = add_user(
            sessions, login=login, name=login.title(), password=PASSWORD, grade=grade, specialties=specialties
        )
        ids[login] = user.id
        got = client.post("/v1/auth/token", data={"username": login, "password": PASSWORD})
        assert got.status_code == 200, got.text
        headers[login] = {"Authorization": f"Bearer {got.json()['access_token']}"}
    return Api(client, sessions, app.state.ingestor.blobs, headers, ids)


def submit(api: Api, item_id: str, login: str = "ann.attending", text: str = "AF, rate 120.") -> None:
    assert api.post(login, f"/v1/worklist-items/{item_id}/claim")[0] == 200
    draft = {"text": text, "ai_agrees": True, "physician_label": "af"}
    assert api.post(login, f"/v1/worklist-items/{item_id}/draft", json=draft)[0] == 200
    status, body = api.post(login, f"/v1/worklist-items/{item_id}/sign")
    assert (status, body["state"]) == (200, "awaiting_review")


def test_the_worklist_lists_open_items_with_their_sla(api: Api) -> None:
    af = api.item(ecg("af", 0.93))
    normal = api.item(ecg("normal", 0.05))
    api.item(breast_us("malignant", 0.9))  # sonography: not in this list
    status, body = api.get("ann.attending", "/v1/worklists/cardiology")
    assert status == 200
    assert (body["worklist"], body["total"]) == ("cardiology", 2)
    items = body["items"]
    assert isinstance(items, list) and [row["id"] for row in items] == [af, normal]
    first = items[0]
    assert set(first) >= ITEM_KEYS
    assert (first["state"], first["label"], first["score"], first["effective_priority"]) == (
        "unread",
        "af",
        pytest.approx(0.93),
        "stat",
    )
    assert 30 * 60 - 120 <= first["seconds_to_due"] <= 30 * 60  # a range: the seconds count down (timing)
    assert datetime.fromisoformat(first["due_at"]) > datetime.fromisoformat(first["received_at"])
    assert (items[1]["effective_priority"], items[1]["label"]) == ("routine", "normal")

    status, body = api.get("ann.attending", "/v1/worklists/cardiology?limit=1")
    assert (status, [row["id"] for row in body["items"]], body["total"]) == (200, [af], 2)
    status, body = api.get("ann.attending", "/v1/worklists")
    assert (status, body) == (200, {"worklists": [{"worklist": "cardiology", "open": 2}]})


def test_claim_then_409_for_another_reader(api: Api) -> None:
    item = api.item(ecg("af", 0.93))
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/claim")
    assert status == 200
    assert (body["id"], body["state"], body["claimed_by"], body["first_reader_id"]) == (
        item,
        "claimed",
        api.ids["ann.attending"],
        api.ids["ann.attending"],
    )
    assert body["allowed_actions"] == ["claim", "release", "draft"]
    status, body = api.post("bob.attending", f"/v1/worklist-items/{item}/claim")
    assert status == 409
    assert body["error"] == "conflict" and "claimed by" in str(body["detail"])


def test_403_with_a_reason(api: Api) -> None:
    item = api.item(ecg("af", 0.93))
    status, body = api.post("dee.resident", f"/v1/worklist-items/{item}/claim")
    assert (status, body["error"]) == (403, "forbidden") and "resident" in str(body["detail"])

    for status, body in (
        api.get("eve.sono", "/v1/worklists/cardiology"),
        api.get("eve.sono", f"/v1/worklist-items/{item}"),
        api.post("eve.sono", f"/v1/worklist-items/{item}/claim"),
    ):
        assert (status, body["error"]) == (403, "forbidden") and "specialties" in str(body["detail"])

    submit(api, item)
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/sign")
    assert status == 403 and "first reader may not co-sign" in str(body["detail"])
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/return", json={"comment": "mine"})
    assert status == 403 and "first reader may not return" in str(body["detail"])
    status, body = api.post("bob.attending", f"/v1/worklist-items/{item}/sign")
    assert status == 403 and "associate_chief" in str(body["detail"])
    assert api.get("ann.attending", f"/v1/worklist-items/{item}")[1]["state"] == "awaiting_review"


def test_401_without_a_token(api: Api) -> None:
    item = api.item(ecg("af", 0.93))
    for status, body in (
        api.get(None, "/v1/worklists"),
        api.get(None, "/v1/worklists/cardiology"),
        api.get(None, f"/v1/worklist-items/{item}"),
        api.post(None, f"/v1/worklist-items/{item}/claim"),
        api.post(None, f"/v1/worklist-items/{item}/draft", json={"text": "x"}),
        api.get(None, "/v1/stats/turnaround"),
    ):
        assert (status, body) == (
            401,
            {
                "error": "not_authenticated",
                "detail": "sign in first: send 'Authorization: Bearer TOKEN' from /v1/auth/token",
            },
        )
    response = api.client.get("/v1/worklists", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": "not_authenticated", "detail": "the token is not valid"}


def test_413_for_a_draft_over_the_limit(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESCREEN_MAX_REPORT_CHARS", "50")
    get_settings.cache_clear()
    item = api.item(ecg("af", 0.93))
    api.post("ann.attending", f"/v1/worklist-items/{item}/claim")
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/draft", json={"text": "x" * 51})
    assert (status, body["error"]) == (413, "too_large") and "50" in str(body["detail"])
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/draft", json={"text": "x" * 50})
    assert (status, body["state"]) == (200, "draft")
    assert body["reports"][0]["text"] == "x" * 50


def test_422_for_a_draft_without_text_or_a_return_without_comment(api: Api) -> None:
    item = api.item(ecg("af", 0.93))
    api.post("ann.attending", f"/v1/worklist-items/{item}/claim")
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/draft", json={"ai_agrees": True})
    assert (status, body["error"]) == (422, "invalid_request") and "text" in str(body["detail"])
    assert api.get("ann.attending", f"/v1/worklist-items/{item}")[1]["reports"] == []
    submit(api, item)
    for payload in ({}, {"comment": ""}):
        status, body = api.post("cy.assoc", f"/v1/worklist-items/{item}/return", json=payload)
        assert (status, body["error"]) == (422, "invalid_request")


def test_404_for_an_unknown_action_or_item(api: Api) -> None:
    item = api.item(ecg("af", 0.93))
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/approve")
    assert (status, body["error"]) == (404, "not_found") and "approve" in str(body["detail"])
    assert api.get("ann.attending", f"/v1/worklist-items/{item}")[1]["state"] == "unread"
    assert api.get("ann.attending", "/v1/worklist-items/nope")[0] == 404
    assert api.post("ann.attending", "/v1/worklist-items/nope/claim")[0] == 404


def test_full_review_over_http_then_turnaround_stats(api: Api) -> None:
    item = api.item(ecg("af", 0.93))
    status, body = api.get("ann.attending", "/v1/stats/turnaround")
    assert (status, body) == (200, {"groups": []})
    submit(api, item, text="AF.")
    status, body = api.post("cy.assoc", f"/v1/worklist-items/{item}/return", json={"comment": "Rate?"})
    assert (status, body["state"], body["return_comment"]) == (200, "returned", "Rate?")
    submit(api, item, text="AF, rate 120.")
    status, body = api.post("cy.assoc", f"/v1/worklist-items/{item}/sign")
    assert (status, body["state"], body["ai_agrees"]) == (200, "final", True)
    assert body["finalized_at"] is not None and body["return_comment"] is None
    signatures = body["reports"][0]["signatures"]
    assert [(s["kind"], s["user_id"]) for s in signatures] == [
        ("submitted", api.ids["ann.attending"]),
        ("submitted", api.ids["ann.attending"]),
        ("cosigned", api.ids["cy.assoc"]),
    ]
    assert api.get("ann.attending", "/v1/worklists/cardiology")[1]["items"] == []

    status, body = api.get("bob.attending", "/v1/stats/turnaround")
    assert status == 200
    (group,) = body["groups"]
    assert (group["worklist"], group["priority"], group["n"], group["within_target"], group["target_minutes"]) == (
        "cardiology",
        "stat",
        1,
        1.0,
        30.0,
    )
    assert 0 <= group["p50_minutes"] == group["p95_minutes"] < 5  # a range: minutes the test took (timing)

    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/amend")
    assert (status, body["error"]) == (401, "step_up_required")  # amending a final report is sensitive
    api.step_up("ann.attending")
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/amend")
    assert (status, body["state"]) == (200, "draft")
    assert [(r["version"], r["status"]) for r in body["reports"]] == [(1, "superseded"), (2, "draft")]


def test_a_cosign_covers_the_text_the_reviewer_read(api: Api) -> None:
    item_id = api.item(ecg("af", 0.93))
    submit(api, item_id, text="AF, rate 120.")
    _, seen = api.get("cy.assoc", f"/v1/worklist-items/{item_id}")
    digest = seen["reports"][-1]["text_sha256"]
    stale = "0" * 64
    status, body = api.post("cy.assoc", f"/v1/worklist-items/{item_id}/sign", json={"text_sha256": stale})
    assert status == 409 and "changed" in body["detail"]
    status, body = api.post("cy.assoc", f"/v1/worklist-items/{item_id}/sign", json={"text_sha256": digest})
    assert (status, body["state"]) == (200, "final")
    [cosign] = [s for s in body["reports"][-1]["signatures"] if s["kind"] == "cosigned"]
    assert cosign["text_sha256"] == digest


def test_study_routes_show_patient_identifiers_only_to_readers_of_its_worklists(api: Api) -> None:
    item_id = api.item(ecg("af", 0.93))
    _, item = api.get("ann.attending", f"/v1/worklist-items/{item_id}")
    study_id = item["study_id"]
    _, mine = api.get("ann.attending", f"/v1/studies/{study_id}")
    assert mine["patient_id"]
    for login in (None, "eve.sono"):  # a sender without a token; a reader of another specialty
        status, other = api.get(login, f"/v1/studies/{study_id}")
        assert status == 200 and other["patient_id"] is None and other["patient_name"] is None
        listing = api.get(login, "/v1/studies")[1]
        assert all(row["patient_id"] is None for row in listing["items"])
        fhir = api.get(login, f"/v1/studies/{study_id}/fhir")[1]
        assert "reference" not in fhir.get("subject", {})
