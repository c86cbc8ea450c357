"""``GET /v1/monitoring`` and the page ``/ui/models`` in-process over a migrated SQLite: 401 without
a token, a signed report with the physician's label moves the served figures, an induced drift
shows as an alarm on the page with its plots; the label over the API (400, 409); the plot geometry."""

from __future__ import annotations

import re
from html import escape
from typing import Any

import pytest

from prescreen.evaluation.monitoring import MonitoringPolicy
from prescreen.serving.monitoring import histogram_plot, trend_plot
from prescreen.store.monitoring import raise_alarms
from tests.serving.test_worklists_api import PASSWORD, Api, api, submit
from tests.store.test_monitoring import CARDS, at_site, ecg_card
from tests.store.test_worklist import ecg, one_item, screen_study, triage

__all__ = ["api"]  # the fixture


class FakeModel:
    def __init__(self) -> None:
        self.card = ecg_card()


class FakeEngine:
    """What the monitoring routes read of the engine: the active models' cards, the model store."""

    def __init__(self) -> None:
        self.models = {"ecg-rhythm": FakeModel()}
        self.store = None


def with_engine(api: Api) -> Api:
    api.client.app.state.engine = FakeEngine()  # type: ignore[attr-defined]
    return api


def cosign(api: Api, item: str, label: str, ai_agrees: bool = True) -> None:
    assert api.post("ann.attending", f"/v1/worklist-items/{item}/claim")[0] == 200
    body = {"text": "Read.", "ai_agrees": ai_agrees, "physician_label": label}
    assert api.post("ann.attending", f"/v1/worklist-items/{item}/draft", json=body)[0] == 200
    assert api.post("ann.attending", f"/v1/worklist-items/{item}/sign")[1]["state"] == "awaiting_review"
    assert api.post("cy.assoc", f"/v1/worklist-items/{item}/sign")[1]["state"] == "final"


def overall(body: dict[str, Any]) -> dict[str, Any]:
    (group,) = [g for g in body["groups"] if g["scope"] == "overall"]
    return group


def test_monitoring_needs_a_token(api: Api) -> None:
    status, body = api.get(None, "/v1/monitoring")
    assert (status, body["error"]) == (401, "not_authenticated")
    response = api.client.get("/v1/monitoring", headers={"Authorization": "Bearer forged"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    status, body = api.get("ann.attending", "/v1/monitoring")
    assert status == 200
    assert set(body) == {"generated_at", "policy", "groups", "alarms", "models"}
    assert body["groups"] == [] and body["alarms"] == [] and body["models"] == []
    assert body["policy"]["target"] == 0.95 and body["policy"]["target_metric"] == "accuracy"


def test_a_signed_report_moves_the_served_figures(api: Api) -> None:
    with_engine(api)
    item = api.item(ecg("af", 0.93))
    _, body = api.get("ann.attending", "/v1/monitoring")
    before = overall(body)
    assert (before["studies"], before["labelled"], before["accuracy"]["n"]) == (1, 0, 0)
    (model,) = body["models"]
    assert (model["task"], model["version"], model["score_reference"]) == ("ecg-rhythm", "1", True)
    served = CARDS["1"].test  # the fake version "1" carries the shipped ECG card's figures
    assert served is not None
    assert model["headline"]["metrics"]["accuracy"]["value"] == pytest.approx(served.metrics["accuracy"].value)

    cosign(api, item, "af")
    _, body = api.get("bob.attending", "/v1/monitoring")
    after = overall(body)
    assert (after["labelled"], after["accuracy"]["value"], after["accuracy"]["n"]) == (1, 1.0, 1)
    assert after["sensitivity"]["n"] == 1 and after["confusion"]["tp"] == 1
    assert body["groups"][1]["institution"] == "(unknown)"  # the upload came without an institution
    _, detail = api.get("ann.attending", f"/v1/worklist-items/{item}")
    assert detail["reports"][-1]["physician_label"] == "af"

    status, body = api.get("ann.attending", "/v1/monitoring?task=chest-xray")
    assert (status, body["groups"], body["models"]) == (200, [], [])


def test_the_label_over_the_api(api: Api) -> None:
    item = api.item(ecg("af", 0.93))
    api.post("ann.attending", f"/v1/worklist-items/{item}/claim")
    status, body = api.get("ann.attending", f"/v1/worklist-items/{item}")
    assert body["label_choices"] == ["normal", "af", "other", "noisy", "not assessable"]
    status, body = api.post(
        "ann.attending", f"/v1/worklist-items/{item}/draft", json={"text": "AF.", "physician_label": "pneumonia"}
    )
    assert (status, body["error"]) == (400, "invalid_request") and "normal, af, other, noisy" in body["detail"]
    assert api.post("ann.attending", f"/v1/worklist-items/{item}/draft", json={"text": "AF."})[0] == 200
    status, body = api.post("ann.attending", f"/v1/worklist-items/{item}/sign")
    assert (status, body["error"]) == (409, "conflict") and "label" in body["detail"]
    submit(api, item)  # with a label: submitted


def test_the_models_page_shows_figures_alarms_and_plots(api: Api) -> None:
    with_engine(api)
    for _ in range(6):
        study_id = screen_study(api.sessions, api.blobs, ecg("af", 0.95))
        at_site(api.sessions, study_id, "clinic-7")
    triage(api.sessions)
    policy = MonitoringPolicy(window=6, min_labelled=5)
    (alarm,) = raise_alarms(api.sessions, CARDS, policy)
    first = one_item(api.sessions, study_id).id
    cosign(api, first, "normal", ai_agrees=False)

    client = api.client
    anonymous = client.get("/ui/models", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login?next=/ui/models"
    signed_in = client.post("/ui/login", data={"login": "ann.attending", "password": PASSWORD}, follow_redirects=False)
    assert signed_in.status_code == 303
    page = client.get("/ui/models")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert "模型与在用监测" in html and "在用模型" in html and "未解除的告警" in html
    assert 'data-kind="score_drift"' in html and "评分漂移" in html and "clinic-7" in html
    assert f"PSI {alarm['detail']['psi']:.3f} &gt; 0.25" in html
    assert escape(alarm["message"]) in html  # the English message, in its title
    assert "<code>fake-ecg-rhythm:1</code>" in html and 'href="/ui/models/ecg-rhythm/shadow"' in html
    assert (
        html.count('class="plot plot-trend"') == 2 and html.count('class="plot plot-histogram"') == 2
    )  # overall, site
    assert 'class="target-line"' in html and 'class="ci-band"' in html
    rows = re.findall(r'<tr class="group-row scope-(\w+)" data-institution="([^"]*)"', html)
    assert rows == [("overall", ""), ("site", "clinic-7")]
    assert "0.0%<span" in html  # the one labelled study was a false positive: accuracy 0 %
    assert "style=" not in html  # the page's CSP allows no inline style
    client.cookies.clear()


def test_plot_geometry() -> None:
    trend = [
        {"index": 1, "value": 1.0, "ci_low": 0.2, "ci_high": 1.0, "n": 1},
        {"index": 10, "value": 0.9, "ci_low": 0.6, "ci_high": 0.98, "n": 10},
    ]
    plot = trend_plot(trend, 0.95)  # type: ignore[arg-type]
    assert plot is not None and trend_plot([], 0.95) is None
    points = [tuple(map(float, p.split(","))) for p in plot["line"].split()]
    assert points[0][0] == plot["x_left"] and points[-1][0] == plot["x_right"]
    assert points[0][1] < points[-1][1] < plot["baseline"]  # a higher value is drawn higher (smaller y)
    assert plot["y_ticks"][0]["label"] == "0.20" and plot["y_ticks"][-1]["label"] == "1.00"  # the band fits
    assert len(plot["band"].split()) == 4
    drift = {
        "psi": 1.2,
        "n": 4,
        "window": 4,
        "threshold": 0.25,
        "full_window": True,
        "edges": [0.0, 0.5, 1.0],
        "recent": [0.25, 0.75],
        "reference": [0.9, 0.1],
        "reference_n": 100,
        "reason": None,
    }
    bars = histogram_plot(drift)  # type: ignore[arg-type]
    assert bars is not None and len(bars["bars"]) == 2 and len(bars["reference"]) == 2
    recent, reference = bars["bars"], bars["reference"]
    assert recent[1]["h"] == pytest.approx(3 * recent[0]["h"], rel=0.02)
    assert reference[0]["h"] > recent[1]["h"] > reference[1]["h"]
    assert histogram_plot({**drift, "n": 0}) is None  # type: ignore[typeddict-item]
