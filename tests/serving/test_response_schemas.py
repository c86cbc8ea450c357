"""The documented response schemas tell the truth: every key a route returns is a property of its
schema in ``app.openapi()`` and every property is returned; and no key of the store's read views
is lost on the way (FastAPI validates a route's response against its return type and silently
drops keys the type does not declare).

Items are made as in :mod:`tests.serving.test_worklists_api` (its ``api`` fixture); nested objects
(series, results, deliveries, report versions, signatures, escalations, history, groups) are
checked against their own schemas too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from prescreen.domain import DeliveryKind
from prescreen.store.queue import utcnow
from prescreen.store.reading import item_detail
from prescreen.store.schema import Delivery
from prescreen.store.sla import ai_agreement_stats, record_escalations, turnaround_stats
from prescreen.store.users import get_principal
from prescreen.store.views import StudyFilter, list_studies, study_detail
from prescreen.store.worklist import list_worklist
from tests.serving.test_worklists_api import Api, api, submit  # noqa: F401  (api: the fixture)
from tests.store.test_worklist import TARGETS, ecg


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The schema a ``$ref`` points to (or the schema itself)."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    resolved: dict[str, Any] = components[name]
    return resolved


def assert_matches(value: Any, schema: dict[str, Any], components: dict[str, Any], where: str) -> int:
    """Check ``value``'s keys against ``schema``, recursively; returns how many objects were checked."""
    schema = _resolve(schema, components)
    if value is None:
        return 0
    if "anyOf" in schema:  # ``X | None``: the branch that is not null
        (branch,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return assert_matches(value, branch, components, where)
    if isinstance(value, list):
        assert schema.get("type") == "array", f"{where}: a list where the schema says {schema}"
        return sum(assert_matches(v, schema["items"], components, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict) and "properties" in schema:
        properties = schema["properties"]
        assert set(value) == set(properties), (
            f"{where}: returned but not documented {sorted(set(value) - set(properties))}, "
            f"documented but not returned {sorted(set(properties) - set(value))}"
        )
        assert set(schema.get("required", [])) == set(properties), f"{where}: every key is always returned"
        return 1 + sum(assert_matches(value[k], properties[k], components, f"{where}.{k}") for k in value)
    return 0


def assert_same_keys(view: Any, served: Any, where: str) -> None:
    """The served JSON has exactly the keys of what the store's view returned, at every level."""
    if isinstance(view, dict):
        assert isinstance(served, dict), f"{where}: an object became {served!r}"
        assert set(view) == set(served), (
            f"{where}: dropped {sorted(set(view) - set(served))}, added {sorted(set(served) - set(view))}"
        )
        for key in view:
            assert_same_keys(view[key], served[key], f"{where}.{key}")
    elif isinstance(view, list):
        assert isinstance(served, list) and len(served) == len(view), f"{where}: {len(view)} rows became {served!r}"
        for i, (row, served_row) in enumerate(zip(view, served, strict=True)):
            assert_same_keys(row, served_row, f"{where}[{i}]")


def _response_schema(openapi: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation = openapi["paths"][path][method]
    schema: dict[str, Any] = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert "$ref" in schema, f"{method.upper()} {path} documents no response model: {schema}"
    return schema


@pytest.fixture
def served(api: Api) -> dict[str, str]:  # noqa: F811
    """A final report (for the statistics), an open item with escalations and a study with a delivery."""
    done = api.item(ecg("af", 0.93))
    submit(api, done, text="AF, rate 120.")
    assert api.post("cy.assoc", f"/v1/worklist-items/{done}/sign")[1]["state"] == "final"
    open_item = api.item(ecg("af", 0.91))
    assert record_escalations(api.sessions, TARGETS, now=utcnow() + timedelta(hours=1))  # past due
    _, detail = api.get("ann.attending", f"/v1/worklist-items/{open_item}")
    with api.sessions.begin() as session:  # as screening queues it for a DICOM SR destination
        session.add(Delivery(study_id=detail["study_id"], kind=DeliveryKind.DICOM_SR, destination="PACS"))
    return {"done": done, "open": open_item, "study": detail["study_id"]}


@pytest.mark.parametrize("login", ["ann.attending", None])
def test_study_payloads_match_their_documented_schemas(api: Api, served: dict[str, str], login: str | None) -> None:  # noqa: F811
    """Also for a sender without a token, who sees the patient fields redacted (None, not absent)."""
    openapi = api.client.app.openapi()  # type: ignore[attr-defined]
    components = openapi["components"]["schemas"]
    for route, path in (("/v1/studies", "/v1/studies"), ("/v1/studies/{study_id}", f"/v1/studies/{served['study']}")):
        status, body = api.get(login, path)
        assert status == 200, body
        checked = assert_matches(body, _response_schema(openapi, "get", route), components, f"GET {path}")
        assert checked >= 2
    _, study = api.get(login, f"/v1/studies/{served['study']}")
    assert study["series"][0]["result"] is not None and study["deliveries"]
    assert (study["patient_id"] is None) == (login is None)


def test_worklist_payloads_match_their_documented_schemas(api: Api, served: dict[str, str]) -> None:  # noqa: F811
    openapi = api.client.app.openapi()  # type: ignore[attr-defined]
    components = openapi["components"]["schemas"]
    routes = {
        "/v1/worklists/{specialty}": "/v1/worklists/cardiology",
        "/v1/worklist-items/{item_id}": f"/v1/worklist-items/{served['done']}",
        "/v1/stats/turnaround": "/v1/stats/turnaround",
        "/v1/stats/ai-agreement": "/v1/stats/ai-agreement",
    }
    bodies: dict[str, Any] = {}
    for route, path in routes.items():
        status, body = api.get("cy.assoc", path)
        assert status == 200, body
        assert_matches(body, _response_schema(openapi, "get", route), components, f"GET {path}")
        bodies[route] = body
    # what was checked is not empty: a listed item, signed report versions, history and both statistics
    assert bodies["/v1/worklists/{specialty}"]["items"]
    final = bodies["/v1/worklist-items/{item_id}"]
    assert final["reports"][0]["signatures"] and final["history"]
    assert bodies["/v1/stats/turnaround"]["groups"] and bodies["/v1/stats/ai-agreement"]["groups"]

    status, escalated = api.get("cy.assoc", f"/v1/worklist-items/{served['open']}")
    assert status == 200 and [e["level"] for e in escalated["escalations"]] == [100]  # seen past due: 100 at once
    item_schema = _response_schema(openapi, "get", "/v1/worklist-items/{item_id}")
    assert_matches(escalated, item_schema, components, "GET an escalated item")
    # the reader actions answer with the same item schema
    status, claimed = api.post("ann.attending", f"/v1/worklist-items/{served['open']}/claim")
    assert status == 200
    action_schema = _response_schema(openapi, "post", "/v1/worklist-items/{item_id}/{action}")
    assert action_schema == item_schema
    assert_matches(claimed, action_schema, components, "POST claim")


def test_the_routes_serve_every_key_of_the_store_views(api: Api, served: dict[str, str]) -> None:  # noqa: F811
    reader = get_principal(api.sessions, api.ids["cy.assoc"])
    with api.sessions() as session:
        views: dict[str, Any] = {
            "/v1/studies": list_studies(session, StudyFilter()),
            f"/v1/studies/{served['study']}": study_detail(session, served["study"]),
            "/v1/worklists/cardiology": {
                "worklist": "cardiology",
                "items": list_worklist(session, "cardiology", TARGETS),
                "total": 1,
            },
            f"/v1/worklist-items/{served['done']}": item_detail(session, served["done"], reader, TARGETS),
            f"/v1/worklist-items/{served['open']}": item_detail(session, served["open"], reader, TARGETS),
            "/v1/stats/turnaround": {"groups": turnaround_stats(session, TARGETS)},
            "/v1/stats/ai-agreement": {"groups": ai_agreement_stats(session)},
        }
    for path, view in views.items():
        status, body = api.get("cy.assoc", path)
        assert status == 200, body
        assert_same_keys(view, body, f"GET {path}")
