"""The result SR: a TID 1500 Comprehensive 3D SR in the sources' study, readable back by pydicom and highdicom."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from prescreen.domain import Finding
from prescreen.errors import InvalidStudyError, PrescreenError
from prescreen.integration.sr import build_sr
from tests.fixtures_dicom import PATIENT, make_instance


def finding(series_uid: str, **changes: object) -> Finding:
    values: dict[str, object] = {
        "series_uid": series_uid,
        "task": "breast-us",
        "model_name": "tiny-resnet",
        "model_version": "2.3.1",
        "flagged": True,
        "label": "malignant",
        "score": 0.8125,
        "threshold": 0.5,
        "probabilities": {"benign": 0.1875, "malignant": 0.8125},
        "created_at": datetime(2024, 3, 15, 12, 30, 0),
    }
    values.update(changes)
    return Finding(**values)  # type: ignore[arg-type]


def roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Write as Part 10 (file meta enforced) and read back."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def items(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every content item of the SR tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from items(item)


def named(ds: pydicom.Dataset, code: str) -> list[pydicom.Dataset]:
    return [i for i in items(ds) if i.ConceptNameCodeSequence[0].CodeValue == code]


def referenced_uids(ds: pydicom.Dataset) -> set[str]:
    return {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in items(ds)
        if i.ValueType in ("IMAGE", "COMPOSITE", "WAVEFORM")
    }


def evidence_uids(ds: pydicom.Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def check_report(sr: pydicom.Dataset, sources: list[pydicom.Dataset], result: Finding) -> None:
    """What every SR must hold, whatever the source kind."""
    assert sr.file_meta.MediaStorageSOPClassUID == Comprehensive3DSRStorage
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    assert sr.SOPInstanceUID not in {s.SOPInstanceUID for s in sources}
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    (score,) = named(sr, "ABNSCORE")
    assert score.ValueType == "NUM"
    assert math.isclose(float(score.MeasuredValueSequence[0].NumericValue), result.score)
    assert score.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "{score}"
    assert [i.TextValue for i in named(sr, "111001")] == [result.model_name]  # Algorithm Name
    assert [i.TextValue for i in named(sr, "111003")] == [result.model_version]  # Algorithm Version
    (flag,) = named(sr, "121071")  # Finding
    assert flag.ConceptCodeSequence[0].CodeValue == ("263654008" if result.flagged else "17621005")
    (label,) = named(sr, "CLASS")
    assert label.ConceptCodeSequence[0].CodeMeaning == result.label
    uids = {str(s.SOPInstanceUID) for s in sources}
    assert referenced_uids(sr) == uids
    assert evidence_uids(sr) == uids
    # highdicom reads it back as a TID 1500 report with one group holding the score
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.Comprehensive3DSR.from_dataset(sr)])
    (group,) = report.get_image_measurement_groups()
    assert math.isclose(group.get_measurements()[0].value, result.score)


@pytest.mark.parametrize("modality", ["US", "CR", "DX", "ECG"])
def test_sr_of_each_source_kind(modality: str) -> None:
    study = generate_uid()
    series = generate_uid()
    sources = [make_instance(modality, study_uid=study, series_uid=series) for _ in range(2)]
    result = finding(series)
    sr = roundtrip(build_sr(sources, [result]))
    check_report(sr, sources, result)
    for keyword, value in PATIENT.items():
        assert str(sr.get(keyword)) == value, keyword
    kinds = {i.ValueType for i in items(sr) if "ReferencedSOPSequence" in i}
    assert kinds == ({"COMPOSITE"} if modality == "ECG" else {"IMAGE"})
    assert sr.SeriesNumber == 990
    assert sr.Manufacturer == "prescreen"
    assert sr.ContentDate == "20240315"


def test_sr_of_pydicom_ecg_waveform_file() -> None:
    source = pydicom.dcmread(str(get_testdata_file("waveform_ecg.dcm")), stop_before_pixels=True)
    assert source.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"
    result = finding(source.SeriesInstanceUID, task="ecg-rhythm", label="AF", flagged=False, score=0.25)
    sr = roundtrip(build_sr([source], [result]))
    check_report(sr, [source], result)
    assert sr.PatientID == source.PatientID
    assert sr.PatientName == source.PatientName
    assert sr.SpecificCharacterSet == source.SpecificCharacterSet
    procedure = [i for i in items(sr) if i.ConceptNameCodeSequence[0].CodeValue == "121058"]  # Procedure reported
    assert procedure[0].ConceptCodeSequence[0].CodeValue == "29303009"  # Electrocardiographic procedure


@pytest.mark.data
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "cr_chest_rsna_sample.dcm", "RG1_J2KI.dcm"])
def test_sr_of_shipped_samples(shared_data: Path, name: str) -> None:
    source = pydicom.dcmread(shared_data / "dicom" / name, stop_before_pixels=True)
    result = finding(source.SeriesInstanceUID)
    sr = roundtrip(build_sr([source], [result], series_number=77, manufacturer="ACME AI"))
    check_report(sr, [source], result)
    assert sr.SeriesNumber == 77
    assert sr.Manufacturer == "ACME AI"
    assert sr.get("PatientID") == source.get("PatientID")


def test_sr_of_minimal_source_without_patient() -> None:
    source = make_instance("ECG", patient=False, file_meta=False)
    for keyword in ("Modality", "SeriesNumber", "InstanceNumber", "WaveformSequence"):
        delattr(source, keyword)
    result = finding(source.SeriesInstanceUID, task="ecg-rhythm", label="Normal sinus rhythm", flagged=False)
    sr = roundtrip(build_sr([source], [result]))
    check_report(sr, [source], result)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber"):
        assert keyword in sr, keyword  # type 2: present, empty
        assert not sr[keyword].value, keyword
    assert sr.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_invalid_patient_values_are_left_empty_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    source = make_instance("US")
    source.PatientName = "Zebedee Quuxley"  # no caret: highdicom would warn with the name
    source.PatientSex = "unknown"
    source.StudyDate = "yesterday"
    caplog.clear()  # pydicom warned about the values set above
    with caplog.at_level(logging.DEBUG):
        sr = roundtrip(build_sr([source], [finding(source.SeriesInstanceUID)]))
    assert str(sr.PatientName) == "Zebedee Quuxley"
    assert sr.PatientSex == ""
    assert sr.StudyDate == ""
    assert "Zebedee" not in caplog.text
    assert "unknown" not in caplog.text


def test_non_ascii_names_survive() -> None:
    source = make_instance("CR")
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = "Müller^Jörg"
    sr = roundtrip(build_sr([source], [finding(source.SeriesInstanceUID, model_name="modèle")]))
    assert str(sr.PatientName) == "Müller^Jörg"
    assert [i.TextValue for i in named(sr, "111001")] == ["modèle"]


def test_two_series_one_group_each_with_own_references() -> None:
    study = generate_uid()
    us_series, ecg_series = generate_uid(), generate_uid()
    us = [make_instance("US", study_uid=study, series_uid=us_series) for _ in range(3)]
    ecg = [make_instance("ECG", study_uid=study, series_uid=ecg_series)]
    unscreened = [make_instance("CR", study_uid=study)]
    results = [finding(us_series), finding(ecg_series, flagged=False, score=0.1, label="Normal", task="ecg-rhythm")]
    sr = roundtrip(build_sr(us + ecg + unscreened, results))
    groups = named(sr, "125007")  # Measurement Group
    assert len(groups) == 2
    assert referenced_uids(groups[0]) == {s.SOPInstanceUID for s in us}
    assert referenced_uids(groups[1]) == {s.SOPInstanceUID for s in ecg}
    assert [f.ConceptCodeSequence[0].CodeValue for f in named(sr, "121071")] == ["263654008", "17621005"]
    assert evidence_uids(sr) == {s.SOPInstanceUID for s in us + ecg + unscreened}
    assert sr.StudyInstanceUID == study
    codes = {i.ConceptCodeSequence[0].CodeValue for i in named(sr, "121058")}
    assert codes == {"16310003", "29303009", "168537006"}


def test_duplicate_sources_are_referenced_once() -> None:
    source = make_instance("DX")
    sr = build_sr([source, source], [finding(source.SeriesInstanceUID)])
    assert len(named(sr, "121112")) == 1  # Source of Measurement


def test_no_sources() -> None:
    with pytest.raises(InvalidStudyError, match="no source instances"):
        build_sr([], [finding(generate_uid())])


def test_sources_of_two_studies() -> None:
    a, b = make_instance("US"), make_instance("US")
    with pytest.raises(InvalidStudyError, match="span 2 studies"):
        build_sr([a, b], [finding(a.SeriesInstanceUID)])


def test_finding_of_unknown_series() -> None:
    source = make_instance("CR")
    stray = generate_uid()
    with pytest.raises(InvalidStudyError, match=f"series {stray}, which is not among") as info:
        build_sr([source], [finding(stray)])
    assert isinstance(info.value, PrescreenError)


def test_no_findings() -> None:
    source = make_instance("CR")
    with pytest.raises(InvalidStudyError, match="no findings"):
        build_sr([source], [])


def test_source_without_uids() -> None:
    source = make_instance("CR")
    del source.SOPClassUID
    with pytest.raises(InvalidStudyError, match="lacks SOPClassUID"):
        build_sr([source], [finding(source.SeriesInstanceUID)])


@pytest.mark.parametrize("score", [math.nan, -0.1, 1.5])
def test_bad_score(score: float) -> None:
    source = make_instance("US")
    with pytest.raises(InvalidStudyError, match="score outside"):
        build_sr([source], [finding(source.SeriesInstanceUID, score=score)])


def test_missing_model_version() -> None:
    source = make_instance("US")
    with pytest.raises(InvalidStudyError, match="model name or version"):
        build_sr([source], [finding(source.SeriesInstanceUID, model_version=" ")])


def test_unknown_sop_class_only() -> None:
    source = make_instance("US")
    source.SOPClassUID = "1.2.3.4.5"
    with pytest.raises(InvalidStudyError, match="known DICOM storage SOP class"):
        build_sr([source], [finding(source.SeriesInstanceUID)])


def test_bad_series_number() -> None:
    source = make_instance("US")
    with pytest.raises(ValueError, match="series_number"):
        build_sr([source], [finding(source.SeriesInstanceUID)], series_number=0)
