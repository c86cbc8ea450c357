"""A study of several images: every instance is screened (within the per-study budget), the finding
is the highest-scoring instance's and names it, and a budget overrun screens an evenly spaced
sample and says so. Before, any series of two or more images ended ``failed``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import generate_uid

from prescreen.config import get_settings
from prescreen.datasets.files import StudyFiles
from prescreen.domain import JobState
from prescreen.models.model_store import ModelStore
from prescreen.pipeline.engine import ScreeningEngine, sample_instances, split_instances
from prescreen.pipeline.screening import run_job
from prescreen.serving.app import create_app
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import store_files
from prescreen.store.queue import claim_job, complete_studies

pytestmark = pytest.mark.data


@given(st.integers(0, 500), st.integers(1, 64))
def test_a_sample_is_within_budget_in_order_and_spans_the_series(total: int, budget: int) -> None:
    chosen = sample_instances(total, budget)
    assert chosen == sorted(set(chosen))
    assert len(chosen) == min(total, budget)
    assert all(0 <= i < total for i in chosen)
    if total and budget > 1:
        assert chosen[0] == 0 and chosen[-1] == total - 1


def test_instances_are_files_except_a_wfdb_record() -> None:
    assert split_instances(StudyFiles({"b.dcm": b"1", "a.dcm": b"2"})) == [["a.dcm"], ["b.dcm"]]
    assert split_instances(StudyFiles({"r.hea": b"1", "r.dat": b"2"})) == [["r.dat", "r.hea"]]


def us_series(shared_data: Path, n: int) -> dict[str, bytes]:
    """``n`` instances of one US series; instance i has its pixels scaled by a different factor so
    that each scores differently."""
    source = pydicom.dcmread(str(shared_data / "dicom" / "US1_UNCR.dcm"))
    study, series = generate_uid(), generate_uid()
    files = {}
    for i in range(n):
        ds = source.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        pixels = ds.pixel_array.astype(np.float32)
        rolled = np.roll(pixels, shift=37 * i, axis=1) if i else pixels
        ds.PixelData = np.clip(rolled, 0, 255).astype(np.uint8).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files[f"{i}.dcm"] = buffer.getvalue()
    return files


@pytest.fixture(scope="module")
def engine() -> ScreeningEngine:
    return ScreeningEngine(ModelStore())


def test_the_finding_is_the_highest_scoring_instance_and_names_it(engine: ScreeningEngine, shared_data: Path) -> None:
    files = us_series(shared_data, 3)
    alone = {name: engine.screen({name: data}) for name, data in files.items()}
    finding = engine.screen(files)
    top = max(alone.values(), key=lambda f: f.score)
    assert (finding.instances_screened, finding.instances_total, finding.sampled) == (3, 3, False)
    assert finding.score == top.score and finding.instance_uid == top.instance_uid
    assert (
        finding.instance_uid
        == pydicom.dcmread(io.BytesIO(files[next(n for n, f in alone.items() if f is top)])).SOPInstanceUID
    )
    assert len({f.score for f in alone.values()}) > 1  # the instances really differ


def test_over_the_budget_a_representative_sample_is_screened_and_said(
    engine: ScreeningEngine, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESCREEN_MAX_INSTANCES_PER_STUDY", "2")
    get_settings.cache_clear()
    finding = engine.screen(us_series(shared_data, 5))
    assert (finding.instances_screened, finding.instances_total, finding.sampled) == (2, 5, True)


def test_screen_accepts_several_dicom_files_of_one_study(engine: ScreeningEngine, shared_data: Path) -> None:
    files = us_series(shared_data, 2)
    r = TestClient(create_app(engine)).post("/v1/screen", files=[("file", (n, d)) for n, d in files.items()])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["task"], body["instances_screened"], body["instances_total"]) == ("breast-us", 2, 2)
    assert body["instance_uid"] in {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in files.values()}


def test_a_two_image_series_from_the_queue_is_screened(
    engine: ScreeningEngine, shared_data: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    sessions, blobs = session_factory(make_engine(url)), FileBlobStore(tmp_path / "blobs")
    files = us_series(shared_data, 2)
    for name, data in files.items():
        store_files(sessions, blobs, {name: data})
    complete_studies(sessions, 0.0)
    job = claim_job(sessions, "w", lease_seconds=60)
    assert job is not None and len(job.files) == 2
    outcome = run_job(engine.screen, blobs, job)
    assert outcome.state == JobState.DONE, outcome.reason
    assert outcome.finding is not None and outcome.finding.instances_screened == 2
