"""Storing received instances: durable blob first, dedupe by SOP Instance UID, re-open."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from prescreen.errors import InvalidStudyError
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import dicom_meta, store_files, store_instance
from prescreen.store.schema import Instance, Series, Study


@pytest.fixture
def stores(tmp_path: Path) -> tuple[object, FileBlobStore]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    return session_factory(make_engine(url)), FileBlobStore(tmp_path / "blobs")


def ct_bytes(**changes: str) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def count(sessions: object, model: type) -> int:
    with sessions() as s:  # type: ignore[operator]
        return int(s.scalar(select(func.count()).select_from(model)))


def test_same_instance_twice_is_stored_once(stores: tuple[object, FileBlobStore]) -> None:
    sessions, blobs = stores
    data = ct_bytes()
    first = store_instance(sessions, blobs, data, dicom_meta(data, sender="PACS1"))  # type: ignore[arg-type]
    second = store_instance(sessions, blobs, data, dicom_meta(data, sender="PACS1"))  # type: ignore[arg-type]
    assert not first.duplicate and second.duplicate
    assert (count(sessions, Study), count(sessions, Series), count(sessions, Instance)) == (1, 1, 1)
    with sessions() as s:  # type: ignore[operator]
        inst = s.scalars(select(Instance)).one()
        assert blobs.get(inst.blob_key) == data  # the row points at durable bytes


def test_second_instance_joins_its_study_and_reopens_it(stores: tuple[object, FileBlobStore]) -> None:
    sessions, blobs = stores
    a = ct_bytes()
    store_instance(sessions, blobs, a, dicom_meta(a))  # type: ignore[arg-type]
    with sessions.begin() as s:  # type: ignore[attr-defined]
        s.scalars(select(Study)).one().status = "screened"
    b = ct_bytes(SOPInstanceUID=pydicom.uid.generate_uid())
    got = store_instance(sessions, blobs, b, dicom_meta(b))  # type: ignore[arg-type]
    assert not got.duplicate
    with sessions() as s:  # type: ignore[operator]
        study = s.scalars(select(Study)).one()
        assert study.status == "received" and len(study.series[0].instances) == 2


def test_instance_without_study_uid_is_refused_and_nothing_stored(stores: tuple[object, FileBlobStore]) -> None:
    sessions, blobs = stores
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.StudyInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(InvalidStudyError, match="StudyInstanceUID"):
        store_files(sessions, blobs, {"x.dcm": buf.getvalue()})  # type: ignore[arg-type]
    assert count(sessions, Instance) == 0
    assert not [p for p in blobs.root.rglob("*") if p.is_file()]


def test_wfdb_upload_is_one_study_with_generated_uids(stores: tuple[object, FileBlobStore]) -> None:
    sessions, blobs = stores
    got = store_files(
        sessions,
        blobs,
        {"A.hea": b"A 1 300 10\n", "A.dat": b"\x00" * 20},  # type: ignore[arg-type]
        modality="ECG",
        institution="clinic-7",
        patient_id="P1",
    )
    assert len(got) == 2 and len({r.study_uid for r in got}) == 1
    with sessions() as s:  # type: ignore[operator]
        study = s.scalars(select(Study)).one()
        assert study.institution == "clinic-7" and study.patient_id == "P1"
        assert sorted(i.file_name for i in study.series[0].instances) == ["A.dat", "A.hea"]
