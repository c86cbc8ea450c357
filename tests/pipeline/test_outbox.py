"""The outbox with real peers: an edge node forwarding a complete study by C-STORE into Orthanc, and
a screened study's SR delivered by C-STORE, made once and re-sent identically after a failure."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import httpx
import pydicom
from sqlalchemy import select

from prescreen.config import Settings
from prescreen.domain import Finding, JobState
from prescreen.pipeline.outbox import OutboxStep
from prescreen.pipeline.runtime import open_store
from prescreen.store.queue import complete_studies, utcnow
from prescreen.store.schema import Delivery, Study
from tests.fixtures_dicom import OrthancServer, make_instance


def orthanc_sop_uids(orthanc: OrthancServer, study_uid: str) -> list[str]:
    found = httpx.post(
        f"{orthanc.http_url}/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}
    ).json()
    return sorted(
        httpx.get(f"{orthanc.http_url}/instances/{i}/simplified-tags").json()["SOPInstanceUID"] for i in found
    )


def encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_edge_forwards_a_complete_study_by_c_store(orthanc: OrthancServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, forward_to=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", study_quiet_seconds=0)
    ingestor = open_store(settings)
    first = make_instance("CR")
    second = make_instance("CR", study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)
    for ds in (first, second):
        ingestor.store_dicom(encode(ds), sender="MODALITY")
    outbox = OutboxStep(ingestor.sessions, ingestor.blobs, settings)
    assert outbox.run_once()  # queues the study (quiet period 0) and sends it
    study_uid = str(first.StudyInstanceUID)
    assert orthanc_sop_uids(orthanc, study_uid) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    with ingestor.sessions() as session:
        delivery = session.scalars(select(Delivery)).one()
        study = session.scalars(select(Study)).one()
    assert (delivery.kind, delivery.state, delivery.attempts) == ("forward", "delivered", 1)
    assert study.status == "forwarded"


def test_a_forward_to_a_stopped_peer_is_retried_with_backoff(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, forward_to="NOBODY@127.0.0.1:9", study_quiet_seconds=0, delivery_backoff_seconds=60
    )
    ingestor = open_store(settings)
    ingestor.store_dicom(encode(make_instance("US")), sender="MODALITY")
    outbox = OutboxStep(ingestor.sessions, ingestor.blobs, settings)
    assert outbox.run_once()
    assert not outbox.run_once()  # the retry waits for its backoff
    with ingestor.sessions() as session:
        delivery = session.scalars(select(Delivery)).one()
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert delivery.last_error and "9" in delivery.last_error
    assert delivery.next_attempt_at is not None
    wait = delivery.next_attempt_at.replace(tzinfo=utcnow().tzinfo) - utcnow()
    assert timedelta(seconds=50) < wait <= timedelta(seconds=60)
    assert complete_studies(ingestor.sessions, 0, forward_to=settings.forward_to) == []  # queued once


def test_the_sr_is_made_once_and_the_retry_sends_the_same_instance(orthanc: OrthancServer, tmp_path: Path) -> None:
    from sqlalchemy import update

    from prescreen.store.queue import Outcome, claim_job, finish_job

    settings = Settings(home=tmp_path, delivery_backoff_seconds=0.01)
    ingestor = open_store(settings)
    source = make_instance("US")
    ingestor.store_dicom(encode(source), sender="MODALITY")
    complete_studies(ingestor.sessions, 0)
    job = claim_job(ingestor.sessions, "w", lease_seconds=60)
    assert job is not None
    finding = Finding(
        task="breast-us",
        model_name="breast-us",
        model_version="v1",
        flagged=True,
        label="malignant",
        score=0.91,
        threshold=0.5,
        probabilities={"normal": 0.04, "benign": 0.05, "malignant": 0.91},
    )
    dead = "NOBODY@127.0.0.1:9"
    outcome = Outcome(JobState.DONE, finding=finding)
    assert finish_job(ingestor.sessions, job, "w", outcome, sr_destinations=[dead]) == "screened"
    outbox = OutboxStep(ingestor.sessions, ingestor.blobs, settings)
    assert outbox.run_once()  # the SR is made and kept; the send fails
    with ingestor.sessions() as session:
        failed = session.scalars(select(Delivery)).one()
    assert (failed.state, failed.attempts) == ("pending", 1) and failed.blob_key
    made = pydicom.dcmread(io.BytesIO(ingestor.blobs.get(failed.blob_key)))
    with ingestor.sessions.begin() as session:  # the destination comes back (here: a real PACS)
        session.execute(
            update(Delivery).values(destination=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", next_attempt_at=None)
        )
    assert outbox.run_once()
    with ingestor.sessions() as session:
        delivered = session.scalars(select(Delivery)).one()
    assert (delivered.state, delivered.attempts, delivered.blob_key) == ("delivered", 2, failed.blob_key)
    stored = orthanc_sop_uids(orthanc, str(source.StudyInstanceUID))
    assert stored == [made.SOPInstanceUID]  # the same SR instance, in the source's study
    assert made.Modality == "SR" and made.StudyInstanceUID == source.StudyInstanceUID
