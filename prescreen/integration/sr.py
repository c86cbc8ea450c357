"""The AI result of a screened study as a DICOM Structured Report (TID 1500, Comprehensive 3D SR).

The report joins the study it is about (same Study Instance UID, patient and study attributes
copied from the sources) as a new series with modality ``SR``. Each finding becomes one
measurement group (TID 1501) holding:

* the flag as a qualitative evaluation: ``Finding`` (DCM 121071) = ``Abnormal`` / ``Normal`` (SCT),
* the most likely class as a qualitative evaluation in the private scheme ``99PRESCREEN``,
* the abnormality score as a numeric measurement (UCUM ``{score}``),
* the model as algorithm identification (TID 4019: name, version, task and threshold),
* references to every source instance of the series (IMAGE items; COMPOSITE items for ECGs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from copy import deepcopy

import highdicom as hd
import pydicom
from highdicom._standard_utils import get_sop_class_iod_map
from highdicom.sr.enum import RelationshipTypeValues
from pydicom import config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from prescreen import __version__
from prescreen.domain import Finding
from prescreen.errors import InvalidStudyError

PRIVATE_SCHEME = "99PRESCREEN"

FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
ABNORMAL = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
NORMAL = hd.sr.CodedConcept("17621005", "SCT", "Normal")
SOURCE_OF_MEASUREMENT = hd.sr.CodedConcept("121112", "DCM", "Source of Measurement")
SCORE = hd.sr.CodedConcept("ABNSCORE", PRIVATE_SCHEME, "Abnormality score")
SCORE_UNIT = hd.sr.CodedConcept("{score}", "UCUM", "score")
MOST_LIKELY_CLASS = hd.sr.CodedConcept("CLASS", PRIVATE_SCHEME, "Most likely class")

IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
PROCEDURES = {
    "ECG": hd.sr.CodedConcept("29303009", "SCT", "Electrocardiographic procedure"),
    "US": hd.sr.CodedConcept("16310003", "SCT", "Diagnostic ultrasonography"),
    "CR": hd.sr.CodedConcept("168537006", "SCT", "Plain radiography"),
    "DX": hd.sr.CodedConcept("168537006", "SCT", "Plain radiography"),
    "RG": hd.sr.CodedConcept("168537006", "SCT", "Plain radiography"),
}

WAVEFORM_PREFIX = "1.2.840.10008.5.1.4.1.1.9."
# SR documents, encapsulated documents, presentation states: referenced as COMPOSITE, not IMAGE.
NON_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.11.")

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyDescription",
)


def build_sr(
    sources: Sequence[pydicom.Dataset],
    findings: Sequence[Finding],
    *,
    series_number: int = 990,
    manufacturer: str = "prescreen",
) -> pydicom.Dataset:
    """Build a Comprehensive 3D SR measurement report of the findings, in the sources' study.

    Args:
        sources: headers of the study's source instances (pixel data may be absent); they must
            all belong to one study.
        findings: the AI results, one per screened series; each names a series among the sources.
        series_number: Series Number of the new SR series.
        manufacturer: Manufacturer of the SR (and of the observing device and algorithms).

    Returns:
        The SR instance (with file meta), ready to be written as Part 10 or sent by C-STORE.

    Raises:
        InvalidStudyError: when sources is empty, lacks UIDs or spans several studies, when there
            are no findings, or when a finding names a series not among the sources or has an
            unusable score, model name or version.
        ValueError: when series_number is not positive or manufacturer is empty.
    """
    if series_number < 1:
        raise ValueError(f"series_number must be a positive integer, not {series_number}")
    if not manufacturer.strip():
        raise ValueError("manufacturer must not be empty")
    _check_sources(sources)
    if not findings:
        raise InvalidStudyError("no findings to report: a structured report needs at least one finding")
    by_series: dict[str, list[pydicom.Dataset]] = {}
    seen: set[str] = set()
    for ds in sources:
        if ds.SOPInstanceUID in seen:
            continue
        seen.add(ds.SOPInstanceUID)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    for finding in findings:
        _check_finding(finding, by_series)

    created = [f.created_at for f in findings if f.created_at is not None]
    when = max(created) if created else None
    try:
        report = hd.sr.MeasurementReport(
            observation_context=_observation_context(manufacturer),
            procedure_reported=_procedures(sources),
            imaging_measurements=[_measurement_group(f, by_series[str(f.series_uid)], manufacturer) for f in findings],
        )
        sr = hd.sr.Comprehensive3DSR(
            evidence=_evidence([ds for series in by_series.values() for ds in series]),
            content=report[0],
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description="AI pre-screening result",
            manufacturer_model_name="prescreen",
            software_versions=__version__,
            content_date=when.date() if when is not None else None,
            content_time=when.time() if when is not None else None,
            coding_schemes=[
                hd.coding_schemes.CodingSchemeIdentificationItem(
                    designator=PRIVATE_SCHEME,
                    name="prescreen AI result concepts",
                    responsible_organization=manufacturer,
                )
            ],
        )
    except (ValueError, KeyError) as exc:
        raise InvalidStudyError(f"cannot build a structured report for this study: {exc}") from exc
    _copy_patient_and_study(sources[0], sr)
    return sr


def _check_sources(sources: Sequence[pydicom.Dataset]) -> None:
    if not sources:
        raise InvalidStudyError("no source instances: a structured report needs the study's instances")
    for ds in sources:
        missing = [kw for kw in REQUIRED_UIDS if not ds.get(kw)]
        if missing:
            raise InvalidStudyError(f"a source instance lacks {', '.join(missing)}")
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) > 1:
        raise InvalidStudyError(
            f"the source instances span {len(studies)} studies; a structured report is about one study"
        )


def _check_finding(finding: Finding, by_series: dict[str, list[pydicom.Dataset]]) -> None:
    if finding.series_uid is None or finding.series_uid not in by_series:
        raise InvalidStudyError(
            f"the {finding.task} finding names series {finding.series_uid}, which is not among the source instances"
        )
    if not (math.isfinite(finding.score) and 0.0 <= finding.score <= 1.0):
        raise InvalidStudyError(f"the {finding.task} finding has a score outside [0, 1]: {finding.score}")
    if not finding.model_name.strip() or not finding.model_version.strip():
        raise InvalidStudyError(f"the {finding.task} finding lacks its model name or version")


def _observation_context(manufacturer: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["prescreen-device", manufacturer]),
        name="prescreen",
        manufacturer_name=manufacturer,
        model_name="prescreen",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def _procedures(sources: Sequence[pydicom.Dataset]) -> list[hd.sr.CodedConcept]:
    procedures: list[hd.sr.CodedConcept] = []
    for ds in sources:
        modality = str(ds.get("Modality") or "")
        if not modality and str(ds.SOPClassUID).startswith(WAVEFORM_PREFIX):
            modality = "ECG"
        code = PROCEDURES.get(modality, IMAGING_PROCEDURE)
        if code not in procedures:
            procedures.append(code)
    return procedures


def _measurement_group(
    finding: Finding, series: Sequence[pydicom.Dataset], manufacturer: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.model_name,
        version=finding.model_version,
        parameters=[
            f"task={finding.task}",
            f"threshold={finding.threshold:g}",
            f"instances_screened={finding.instances_screened}/{finding.instances_total}"
            + (" (a representative sample)" if finding.sampled else ""),
        ],
        manufacturer=manufacturer,
    )
    evaluations = [hd.sr.QualitativeEvaluation(FINDING, ABNORMAL if finding.flagged else NORMAL)]
    if finding.label.strip():
        label = finding.label.strip()[:64]
        evaluations.append(
            hd.sr.QualitativeEvaluation(MOST_LIKELY_CLASS, hd.sr.CodedConcept(label, PRIVATE_SCHEME, label))
        )
    score = hd.sr.Measurement(name=SCORE, value=float(finding.score), unit=SCORE_UNIT)
    # the image whose score is the finding's is the measurement's source; without it, every image
    driver = [ds for ds in series if str(ds.SOPInstanceUID) == finding.instance_uid and _is_image(ds)]
    images = [
        hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        for ds in (driver or series)
        if _is_image(ds)
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{finding.task} finding"),
        algorithm_id=algorithm,
        measurements=[score],
        qualitative_evaluations=evaluations,
        source_images=images or None,
    )
    # TID 1501 names only IMAGE sources; other instances (ECG waveforms, documents) are referenced
    # the same way (Source of Measurement, CONTAINS) as COMPOSITE items: highdicom cannot read
    # WAVEFORM items back (0.28), and COMPOSITE fits any storage SOP class.
    others = [
        hd.sr.CompositeContentItem(
            name=SOURCE_OF_MEASUREMENT,
            referenced_sop_class_uid=str(ds.SOPClassUID),
            referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        for ds in series
        if not _is_image(ds)
    ]
    if others:
        group[0].ContentSequence.extend(others)
    return group


def _is_image(ds: pydicom.Dataset) -> bool:
    return not str(ds.SOPClassUID).startswith((WAVEFORM_PREFIX, *NON_IMAGE_PREFIXES))


def _evidence(sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Minimal evidence items: the UIDs, and the patient and study attributes highdicom reads, left empty.

    highdicom copies patient attributes from the first evidence item (and logs a patient name it
    finds suspicious); the real values are copied afterwards by :func:`_copy_patient_and_study`.
    It also looks the first item's SOP class up in its IOD tables, so a known class goes first.
    """
    known = get_sop_class_iod_map()
    items: list[pydicom.Dataset] = []
    for ds in sources:
        item = pydicom.Dataset()
        for kw in REQUIRED_UIDS:
            setattr(item, kw, ds.get(kw))
        for kw in PATIENT_STUDY_KEYWORDS:
            setattr(item, kw, None)
        items.append(item)
    items.sort(key=lambda item: str(item.SOPClassUID) not in known)
    if str(items[0].SOPClassUID) not in known:
        raise InvalidStudyError("none of the source instances is of a known DICOM storage SOP class")
    return items


def _copy_patient_and_study(source: pydicom.Dataset, sr: pydicom.Dataset) -> None:
    """Copy the patient and study attributes and the character set from the source.

    A value that is not valid for its VR (or a Patient's Sex other than M, F, O) is left empty
    rather than copied, so that neither the SR nor pydicom's validation warnings carry it.
    """
    for kw in (*PATIENT_STUDY_KEYWORDS, "IssuerOfPatientID", "SpecificCharacterSet"):
        tag = tag_for_keyword(kw)
        if tag is None:  # pragma: no cover - the keywords above are all in the dictionary
            continue
        if tag not in source:
            if kw in ("StudyDescription", "IssuerOfPatientID"):
                sr.pop(tag, None)
            continue
        element = source[tag]
        if _valid(element) and not (kw == "PatientSex" and element.value not in ("M", "F", "O", "", None)):
            sr[tag] = deepcopy(element)
        elif kw != "SpecificCharacterSet":
            setattr(sr, kw, None)
    if "SpecificCharacterSet" not in sr:
        sr.SpecificCharacterSet = "ISO_IR 192"


def _valid(element: DataElement) -> bool:
    values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
    try:
        for value in values:
            validate_value(element.VR, value, config.RAISE)
    except ValueError:
        return False
    return True
