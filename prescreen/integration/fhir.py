"""The AI findings of one study as a FHIR ``DiagnosticReport`` with one contained ``Observation`` per series.

FHIR version: ``fhir.resources`` 8 ships R5 as its default package and R4B (4.3.0) and STU3 beside it;
there is no plain R4 package. R4B is used: its ``DiagnosticReport`` and ``Observation`` are the R4
ones (same elements, same status codes), so the JSON is accepted by R4 servers.

Report status (``DiagnosticReport.status``) from the study status, with / without findings:

- ``screened``: ``final`` / ``registered`` (a screened study without a result has nothing to report);
- ``received``, ``screening``: ``partial`` / ``registered`` (results come later);
- ``failed``, ``unscreenable``: ``partial`` / ``cancelled`` (no further results will come);
- any other status: ``unknown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from prescreen.domain import Finding, StudyStatus, StudySummary

FHIR_PACKAGE = "fhir.resources.R4B"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DICOM_UID = "urn:dicom:uid"

# task -> (v2-0074 diagnostic service section, its display, whether it is an imaging task)
SECTION_BY_TASK: dict[str, tuple[str, str, bool]] = {
    "ecg-rhythm": ("EC", "Electrocardiac (e.g., EKG, EEC, Holter)", False),
    "holter": ("EC", "Electrocardiac (e.g., EKG, EEC, Holter)", False),
    "chest-xray": ("RAD", "Radiology", True),
    "breast-us": ("RUS", "Radiology Ultrasound", True),
}
EKG_STUDY = ("11524-6", "EKG study")
IMAGING_STUDY = ("18748-4", "Diagnostic imaging study")
GENERAL_STUDY = ("47045-0", "Study report")
ABNORMAL = ("263654008", "Abnormal")
NORMAL = ("17621005", "Normal")


def report_status(study_status: str, has_findings: bool) -> str:
    """The ``DiagnosticReport.status`` of a study (see the table in the module docstring).

    Args:
        study_status: the study's status in the store.
        has_findings: whether at least one series has an AI result.
    """
    if study_status == StudyStatus.SCREENED:
        return "final" if has_findings else "registered"
    if study_status in (StudyStatus.RECEIVED, StudyStatus.SCREENING):
        return "partial" if has_findings else "registered"
    if study_status in (StudyStatus.FAILED, StudyStatus.UNSCREENABLE):
        return "partial" if has_findings else "cancelled"
    return "unknown"


def _concept(system: str, code: str, display: str, text: str | None = None) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code, display=display)], text=text)


def _report_code(findings: Sequence[Finding]) -> CodeableConcept:
    kinds = {SECTION_BY_TASK[f.task][2] if f.task in SECTION_BY_TASK else None for f in findings}
    code, display = EKG_STUDY if kinds == {False} else IMAGING_STUDY if kinds == {True} else GENERAL_STUDY
    return _concept(LOINC, code, display, text="AI pre-screening")


def _categories(findings: Sequence[Finding]) -> list[CodeableConcept]:
    sections = dict.fromkeys(SECTION_BY_TASK[f.task][:2] for f in findings if f.task in SECTION_BY_TASK)
    return [_concept(V2_0074, code, display) for code, display in sections]


def _subject(study: StudySummary) -> Reference:
    if not study.patient_id:
        return Reference(display="unknown patient")
    name = " ".join(p for p in (study.patient_name or "").split("^") if p.strip()) or None  # DICOM PN: Family^Given
    return Reference(type="Patient", identifier=Identifier(value=study.patient_id), display=name)


def _observation(index: int, finding: Finding, subject: Reference) -> Observation:
    model = f"{finding.model_name} {finding.model_version}"
    value = ABNORMAL if finding.flagged else NORMAL
    return Observation(
        id=f"finding-{index}",
        status="final",
        identifier=[Identifier(system=DICOM_UID, value=f"urn:oid:{finding.series_uid}")]
        if finding.series_uid
        else None,
        code=CodeableConcept(text=f"AI pre-screening: {finding.task}"),
        subject=subject,
        issued=_aware(finding.created_at),
        valueCodeableConcept=_concept(SNOMED, *value, text=finding.label),
        interpretation=[_concept(V3_INTERPRETATION, *(("A", "Abnormal") if finding.flagged else ("N", "Normal")))],
        method=CodeableConcept(text=f"AI model {model}"),
        device=Reference(display=model),
        component=[
            ObservationComponent(
                code=CodeableConcept(text="abnormality score"),
                valueQuantity=Quantity(value=finding.score, unit="score"),
            ),
            ObservationComponent(
                code=CodeableConcept(text="operating threshold"),
                valueQuantity=Quantity(value=finding.threshold, unit="score"),
            ),
        ],
    )


def _conclusion(study_status: str, findings: Sequence[Finding]) -> str:
    if not findings:
        if study_status in (StudyStatus.FAILED, StudyStatus.UNSCREENABLE):
            return "AI pre-screening: the study could not be screened."
        return "AI pre-screening: no result yet."
    flagged = [f for f in findings if f.flagged]
    parts = [f"{f.task} {f.label} ({f.score:.2f} ≥ {f.threshold:.2f})" for f in flagged]
    head = f"AI pre-screening: {len(flagged)} of {len(findings)} series flagged abnormal"
    return f"{head}: {'; '.join(parts)}." if parts else f"{head}."


def _aware(time: datetime | None) -> datetime | None:
    """FHIR instants need a zone: a naive time is taken as UTC."""
    return time.replace(tzinfo=UTC) if time is not None and time.tzinfo is None else time


def _issued(findings: Sequence[Finding]) -> datetime:
    times = [t for t in (_aware(f.created_at) for f in findings) if t is not None]
    return max(times, default=datetime.now(UTC))


def diagnostic_report(
    study: StudySummary, findings: Sequence[Finding], *, base_url: str | None = None
) -> dict[str, Any]:
    """The FHIR R4 (R4B package) ``DiagnosticReport`` JSON of a study's AI findings.

    The report is identified by the Study Instance UID (``urn:dicom:uid`` / ``urn:oid:<uid>``) and,
    with ``base_url``, by the service's study id (system ``<base_url>studies``). Each finding is a
    contained ``Observation`` (``#finding-<n>``) listed in ``result``.

    Args:
        study: the study the report is about.
        findings: the AI result of each screened series (may be empty).
        base_url: the service's public base URL; when given, the report also carries the study id.

    Raises:
        pydantic.ValidationError: the built resource is not valid FHIR (e.g. a malformed UID).
    """
    subject = _subject(study)
    observations = [_observation(i, f, subject) for i, f in enumerate(findings, start=1)]
    identifiers = [Identifier(system=DICOM_UID, value=f"urn:oid:{study.study_uid}")]
    if base_url:
        identifiers.append(Identifier(system=f"{base_url.rstrip('/')}/studies", value=study.id))
    report = DiagnosticReport(
        status=report_status(study.status, bool(findings)),
        identifier=identifiers,
        category=_categories(findings) or None,
        code=_report_code(findings),
        subject=subject,
        issued=_issued(findings),
        conclusion=_conclusion(study.status, findings),
        contained=observations or None,
        result=[Reference(reference=f"#{o.id}") for o in observations] or None,
    )
    return report.model_dump(mode="json", exclude_none=True)
