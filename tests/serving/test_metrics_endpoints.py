"""BentoML's request series lose the identifiers of their ``endpoint`` label: paths become templates,
series that then coincide are added up, and what does not parse is never served.

The input is made by a real ``prometheus_client`` registry with the label names BentoML's request
middleware uses.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prescreen.serving.metrics_endpoints import endpoint_template, sanitize_endpoints

STUDY = "d3ee4b1fc4324bc78ebeb643d0d5f99c"
STUDY_UID = "1.2.826.0.1.3680043.8.498.10238475629384756"


@pytest.mark.parametrize(
    ("path", "template"),
    [
        (f"/v1/studies/{STUDY}", "/v1/studies/{id}"),
        (f"/v1/studies/{STUDY}/fhir", "/v1/studies/{id}/fhir"),
        (f"/dicomweb/studies/{STUDY_UID}", "/dicomweb/studies/{id}"),
        (f"/v1/worklist-items/{STUDY}/claim", "/v1/worklist-items/{id}/claim"),
        (f"/ui/items/{STUDY}/series/{STUDY_UID}.png", "/ui/items/{id}/series/{id}"),
        ("/v1/explanations/" + "ab" * 24 + ".png", "/v1/explanations/{id}"),
        ("/v1/worklists/cardiology", "/v1/worklists/cardiology"),
        ("/v1/screen", "/v1/screen"),
        ("/v1/models/ecg-rhythm/shadow", "/v1/models/ecg-rhythm/shadow"),
        ("/readyz", "/readyz"),
        ("/", "/"),
        ("/wp-admin/setup-config.php", "/{other}"),
        ("/P-12345", "/{other}"),
    ],
)
def test_endpoint_templates(path: str, template: str) -> None:
    assert endpoint_template(path) == template


def bentoml_like_text(paths: list[str]) -> str:
    registry = CollectorRegistry()
    labels = ["endpoint", "service_name", "service_version", "http_response_code", "runner_name"]
    total = Counter("bentoml_service_request", "Total number of runner RPC", labels, registry=registry)
    duration = Histogram(
        "bentoml_service_request_duration_seconds", "duration", labels, buckets=(0.1, 1.0), registry=registry
    )
    busy = Gauge("bentoml_service_request_in_progress", "in progress", ["endpoint", "runner_name"], registry=registry)
    last = Gauge("bentoml_service_last_request_timestamp_seconds", "last", ["runner_name"], registry=registry)
    for i, path in enumerate(paths):
        values = (path, "prescreen", "not available", "200", "prescreen")
        total.labels(*values).inc()
        duration.labels(*values).observe(0.05 if i % 2 == 0 else 0.5)
        busy.labels(path, "prescreen").set(1)
    last.labels("prescreen").set(1700000000.0)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k in ("endpoint", "le")))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_series_of_one_template_are_added_up_and_ids_are_gone() -> None:
    ids = [f"{k:032x}" for k in range(1, 4)]
    text = bentoml_like_text([*(f"/v1/studies/{i}" for i in ids), "/v1/screen", "/v1/screen"])
    assert all(i in text for i in ids)
    out = sanitize_endpoints(text)
    assert not any(i in out for i in ids)
    got = samples(out)
    studies, screen = (("endpoint", "/v1/studies/{id}"),), (("endpoint", "/v1/screen"),)
    assert got[("bentoml_service_request_total", studies)] == 3
    assert got[("bentoml_service_request_total", screen)] == 2
    assert got[("bentoml_service_request_duration_seconds_count", studies)] == 3
    assert got[("bentoml_service_request_duration_seconds_bucket", (*studies, ("le", "0.1")))] == 2  # 0.05, 0.05
    assert got[("bentoml_service_request_duration_seconds_bucket", (*studies, ("le", "1.0")))] == 3
    assert got[("bentoml_service_request_duration_seconds_sum", studies)] == pytest.approx(0.6)
    assert got[("bentoml_service_request_in_progress", studies)] == 3
    assert got[("bentoml_service_last_request_timestamp_seconds", ())] == 1700000000.0
    assert "# TYPE bentoml_service_request_total counter" in out
    created = [
        s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
        if s.name == "bentoml_service_request_created" and s.labels["endpoint"] == "/v1/studies/{id}"
    ]
    assert len(created) == 1 and 1.6e9 < created[0] < 4e9  # the earliest timestamp, not a sum of three
    assert "# TYPE bentoml_service_request_duration_seconds histogram" in out


def test_text_that_does_not_parse_is_not_served() -> None:
    assert sanitize_endpoints(f'bentoml_x{{endpoint="/v1/studies/{STUDY}"}} not-a-number\n') == ""
