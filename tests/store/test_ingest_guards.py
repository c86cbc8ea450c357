"""Guards at ingestion found in review: nothing is filed into the wrong study, over-long values and
file names are refused with a reason, odd STOW boundaries are a 400."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from prescreen.errors import InvalidStudyError
from prescreen.integration.stow import multipart_boundary
from prescreen.store.blobs import BlobStore
from prescreen.store.ingest import InstanceMeta, MissingIdentifierError, store_instance
from prescreen.store.schema import Instance, Series, Study
from tests.store.test_worklist import Sessions, new_uid


def meta(study_uid: str, series_uid: str) -> InstanceMeta:
    return InstanceMeta(study_uid=study_uid, series_uid=series_uid, sop_instance_uid=new_uid(), modality="CR")


def test_an_instance_naming_another_studys_series_is_refused_and_nothing_is_stored(
    sessions: Sessions, blobs: BlobStore
) -> None:
    study_b, series_b = new_uid(), new_uid()
    store_instance(sessions, blobs, b"b", meta(study_b, series_b))
    with pytest.raises(MissingIdentifierError, match="another study"):
        store_instance(sessions, blobs, b"a", meta(new_uid(), series_b))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 1
        assert session.scalar(select(func.count()).select_from(Series)) == 1
        assert session.scalar(select(func.count()).select_from(Instance)) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/related; type=\"application/dicom\"; boundary*=utf-8''%E2%82%AC",
        'multipart/related; boundary="' + "x" * 71 + '"',
    ],
)
def test_a_boundary_outside_rfc_2046_is_a_clear_400(content_type: str) -> None:
    with pytest.raises(InvalidStudyError):
        multipart_boundary(content_type)


def test_a_series_that_kills_its_worker_every_time_ends_failed_not_in_a_crash_loop(
    sessions: Sessions, blobs: BlobStore
) -> None:
    from prescreen.domain import JobState
    from prescreen.store.queue import claim_job, fail_exhausted_jobs
    from tests.store.test_queue import LEASE, job, later, make_screening_study, study

    study_id = make_screening_study(sessions, blobs)  # type: ignore[arg-type]
    held = None
    for attempt in range(1, 4):  # three workers die holding it (their leases expire)
        held = claim_job(sessions, f"w{attempt}", lease_seconds=LEASE, max_attempts=3, now=later(attempt * (LEASE + 1)))
        assert held is not None and held.attempts == attempt
    assert claim_job(sessions, "w4", lease_seconds=LEASE, max_attempts=3, now=later(4 * (LEASE + 1))) is None
    assert fail_exhausted_jobs(sessions, lease_seconds=LEASE, max_attempts=3, now=later(4 * (LEASE + 1))) == 1
    assert held is not None
    ended = job(sessions, held.id)
    assert ended.state == JobState.FAILED and "3 attempts" in (ended.last_error or "")
    assert study(sessions, study_id).status == "failed"
