"""``GET /v1/stats/review-agreement`` over a migrated SQLite: needs a token, counts a double read done
over HTTP, keeps every key of the store's view (FastAPI drops keys a response type does not declare)
and documents its response model. Items and readers as in :mod:`tests.serving.test_worklists_api`.
"""

from __future__ import annotations

from prescreen.store.agreement import review_agreement
from tests.serving.test_response_schemas import assert_matches, assert_same_keys
from tests.serving.test_worklists_api import Api, api, submit  # noqa: F401  (api: the fixture)
from tests.store.test_worklist import ecg

PATH = "/v1/stats/review-agreement"


def test_401_without_a_token(api: Api) -> None:  # noqa: F811
    status, body = api.get(None, PATH)
    assert (status, body["error"]) == (401, "not_authenticated")


def test_a_double_read_over_http_is_counted(api: Api) -> None:  # noqa: F811
    status, body = api.get("bob.attending", PATH)
    assert status == 200 and body["overall"]["cosigned"] == 0 and body["overall"]["share"] is None
    approved, returned = api.item(ecg("af", 0.93)), api.item(ecg("af", 0.91))
    submit(api, approved, text="AF.")
    assert api.post("cy.assoc", f"/v1/worklist-items/{approved}/sign")[1]["state"] == "final"
    submit(api, returned, login="bob.attending", text="AF.")
    assert api.post("cy.assoc", f"/v1/worklist-items/{returned}/return", json={"comment": "Rate?"})[0] == 200
    submit(api, returned, login="bob.attending", text="AF, rate 120.")
    assert api.post("cy.assoc", f"/v1/worklist-items/{returned}/sign")[1]["state"] == "final"

    status, body = api.get("bob.attending", PATH)
    assert status == 200
    assert body["target"] == 0.98
    overall = body["overall"]
    assert (overall["cosigned"], overall["approved"], overall["returned"], overall["changed"]) == (2, 1, 1, 1)
    assert (overall["share"], overall["meets_target"]) == (0.5, False)
    assert overall["ci_low"] < 0.5 < overall["ci_high"]
    assert [(w["worklist"], w["cosigned"], w["approved"]) for w in body["by_worklist"]] == [("cardiology", 2, 1)]
    assert [(r["first_reader"], r["first_reader_id"], r["share"]) for r in body["by_first_reader"]] == [
        ("ann.attending", api.ids["ann.attending"], 1.0),
        ("bob.attending", api.ids["bob.attending"], 0.0),
    ]
    with api.sessions() as session:
        assert_same_keys(review_agreement(session), body, "review-agreement")
    openapi = api.client.get("/openapi.json").json()
    schema = openapi["paths"][PATH]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "$ref" in schema
    assert assert_matches(body, schema, openapi["components"]["schemas"], PATH) >= 4


def test_since_must_be_a_time(api: Api) -> None:  # noqa: F811
    status, body = api.get("bob.attending", f"{PATH}?since=yesterday")
    assert (status, body["error"]) == (422, "invalid_request")
    status, body = api.get("bob.attending", f"{PATH}?since=2024-01-01T00:00:00Z")
    assert status == 200 and body["overall"]["cosigned"] == 0
