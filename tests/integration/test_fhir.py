"""FHIR DiagnosticReport of a study's AI findings: valid R4(B) JSON with one Observation per finding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from prescreen.domain import Finding, StudySummary
from prescreen.integration.fhir import diagnostic_report, report_status

STUDY = StudySummary(id="0f1e2d", study_uid="1.2.826.0.1.3680043.8.498.1", status="screened", patient_id="PAT-7")


def finding(task: str = "ecg-rhythm", flagged: bool = True, **changes: Any) -> Finding:
    values: dict[str, Any] = {
        "series_uid": "1.2.826.0.1.3680043.8.498.2",
        "task": task,
        "model_name": f"{task}-net",
        "model_version": "1.4.0",
        "flagged": flagged,
        "label": "af" if flagged else "normal",
        "score": 0.91 if flagged else 0.12,
        "threshold": 0.5,
        "probabilities": {"af": 0.91},
        "created_at": datetime(2025, 3, 1, 10, 0, tzinfo=UTC),
    }
    values.update(changes)
    return Finding(**values)


def codes(concept: dict[str, Any]) -> list[str]:
    return [c["code"] for c in concept.get("coding", [])]


def test_report_is_valid_and_complete() -> None:
    report = diagnostic_report(STUDY, [finding()], base_url="https://prescreen.example/")
    DiagnosticReport.model_validate(report)  # round-trips through the R4B model
    assert report["resourceType"] == "DiagnosticReport"
    assert report["status"] == "final"
    assert codes(report["code"]) == ["11524-6"]
    assert codes(report["category"][0]) == ["EC"]
    assert {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.8.498.1"} in report["identifier"]
    assert {"system": "https://prescreen.example/studies", "value": "0f1e2d"} in report["identifier"]
    assert report["subject"]["type"] == "Patient"
    assert report["subject"]["identifier"] == {"value": "PAT-7"}
    assert report["issued"] == "2025-03-01T10:00:00Z"
    assert "1 of 1" in report["conclusion"] and "\n" not in report["conclusion"]

    (obs,) = report["contained"]
    assert report["result"] == [{"reference": f"#{obs['id']}"}]
    assert obs["resourceType"] == "Observation" and obs["status"] == "final"
    assert "ecg-rhythm" in obs["code"]["text"]
    assert codes(obs["valueCodeableConcept"]) == ["263654008"] and obs["valueCodeableConcept"]["text"] == "af"
    assert obs["valueCodeableConcept"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert codes(obs["interpretation"][0]) == ["A"]
    assert {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.8.498.2"} in obs["identifier"]
    score, threshold = (c["valueQuantity"] for c in obs["component"])
    assert score == {"value": 0.91, "unit": "score"} and threshold == {"value": 0.5, "unit": "score"}
    assert "ecg-rhythm-net 1.4.0" in obs["method"]["text"]
    assert obs["device"]["display"] == "ecg-rhythm-net 1.4.0"


def test_normal_finding_and_imaging_codes() -> None:
    report = diagnostic_report(STUDY, [finding("chest-xray", flagged=False)])
    (obs,) = report["contained"]
    assert codes(obs["valueCodeableConcept"]) == ["17621005"] and codes(obs["interpretation"][0]) == ["N"]
    assert codes(report["code"]) == ["18748-4"] and codes(report["category"][0]) == ["RAD"]
    assert len(report["identifier"]) == 1  # no base URL: the Study Instance UID only


def test_several_series_of_mixed_kinds() -> None:
    findings = [
        finding("breast-us", flagged=False, series_uid="1.2.3.1", created_at=datetime(2025, 3, 1, 9, 0, tzinfo=UTC)),
        finding("ecg-rhythm", series_uid="1.2.3.2", created_at=datetime(2025, 3, 2, 8, 30)),  # naive: taken as UTC
    ]
    report = diagnostic_report(STUDY, findings)
    DiagnosticReport.model_validate(report)
    assert codes(report["code"]) == ["47045-0"]  # a general study report code when the kinds are mixed
    assert [codes(c) for c in report["category"]] == [["RUS"], ["EC"]]
    assert len(report["contained"]) == 2 and len({o["id"] for o in report["contained"]}) == 2
    assert [r["reference"] for r in report["result"]] == [f"#{o['id']}" for o in report["contained"]]
    assert report["issued"] == "2025-03-02T08:30:00Z"  # the latest finding


def test_no_patient_id_means_no_identifier() -> None:
    study = StudySummary(id="x", study_uid="1.2.3", status="screened", patient_name="Doe^Jane")
    report = diagnostic_report(study, [finding()])
    assert report["subject"] == {"display": "unknown patient"}
    assert report["contained"][0]["subject"] == {"display": "unknown patient"}


def test_no_findings_yet() -> None:
    study = StudySummary(id="x", study_uid="1.2.3", status="received")
    before = datetime.now(UTC)
    report = diagnostic_report(study, [])
    after = datetime.now(UTC)
    DiagnosticReport.model_validate(report)
    assert report["status"] == "registered"
    assert "contained" not in report and "result" not in report
    assert before.replace(microsecond=0) <= datetime.fromisoformat(report["issued"]) <= after  # issued now (seconds)


@pytest.mark.parametrize(
    ("status", "has_findings", "expected"),
    [
        ("screened", True, "final"),
        ("screened", False, "registered"),
        ("received", False, "registered"),
        ("screening", False, "registered"),
        ("screening", True, "partial"),
        ("failed", False, "cancelled"),
        ("unscreenable", False, "cancelled"),
        ("failed", True, "partial"),
        ("something-new", True, "unknown"),
    ],
)
def test_status_mapping(status: str, has_findings: bool, expected: str) -> None:
    assert report_status(status, has_findings) == expected
    study = StudySummary(id="x", study_uid="1.2.3", status=status)
    assert diagnostic_report(study, [finding()] if has_findings else [])["status"] == expected


def test_built_through_the_models_so_invalid_values_fail() -> None:
    with pytest.raises(ValidationError):
        diagnostic_report(STUDY, [finding(score=float("nan"))])
