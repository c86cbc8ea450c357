"""Read models of stored studies: lists with filters, one study with its series and results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, func, select
from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic (the API's response models) needs it before 3.12

from prescreen.datasets.files import ECG_SOP_CLASSES
from prescreen.domain import Finding, JobState, StudyStatus, StudySummary, points_from_json
from prescreen.errors import InvalidStudyError, NotFoundError
from prescreen.store.queue import as_utc
from prescreen.store.schema import Delivery, Instance, Job, Result, Series, Study

# --- the rows these views return: the API's response models (times are ISO 8601 strings, UTC) ---


class FindingModel(TypedDict):
    """The model that made a result."""

    name: str
    version: str


class OperatingPointRow(TypedDict):
    """The decision at one operating point."""

    threshold: float
    flagged: bool


class FindingRow(TypedDict):
    """The newest AI result of a series."""

    task: str
    model: FindingModel
    flagged: bool
    label: str
    score: float
    threshold: float
    probabilities: dict[str, float]
    created_at: str | None
    instance_uid: str | None
    instances_screened: int
    instances_total: int
    operating_points: dict[str, OperatingPointRow]
    summary: dict[str, Any] | None


class StudyFields(TypedDict):
    """What every view of a study shows (patient fields are None where they are redacted)."""

    study_id: str
    id: str
    study_uid: str
    status: str
    reason: str | None
    patient_id: str | None
    patient_name: str | None
    institution: str | None
    sender: str | None
    order_priority: str | None
    received_at: str
    last_instance_at: str
    screened_at: str | None


class StudyRow(StudyFields):
    """A study in a list; ``flagged``: a model flagged any of its series (None: no result yet)."""

    flagged: bool | None


class StudyPage(TypedDict):
    """One page of studies, and the total that match."""

    items: list[StudyRow]
    total: int
    limit: int
    offset: int


class SeriesRow(TypedDict):
    """A series of a study: its instance count, screening status and newest result."""

    series_uid: str
    modality: str | None
    body_part: str | None
    instances: int
    status: str
    reason: str | None
    #: the fraction of a long analysis done, while it is screening
    progress: float | None
    result: FindingRow | None


class DeliveryRow(TypedDict):
    """A result sent to another system, with its retry log."""

    kind: str
    destination: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: str | None


class StudyDetail(StudyRow):
    """A study with each series and its deliveries."""

    series: list[SeriesRow]
    deliveries: list[DeliveryRow]


@dataclass(frozen=True)
class StudyFilter:
    study_uid: str | None = None
    status: str | None = None
    #: the blind index of a patient id (``patient_pseudonym``): that patient's studies
    patient_index: str | None = None
    #: studies of any of these institutions (empty: all)
    institutions: Sequence[str] = ()
    limit: int = 50
    offset: int = 0


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


def list_studies(session: Session, where: StudyFilter) -> StudyPage:
    """One page of studies, newest first, with the total that match."""
    query = select(Study)
    if where.study_uid:
        query = query.where(Study.study_uid == where.study_uid)
    if where.status:
        query = query.where(Study.status == where.status)
    if where.patient_index:
        query = query.where(Study.patient_index == where.patient_index)
    if where.institutions:
        query = query.where(Study.institution.in_(list(where.institutions)))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    studies = session.scalars(query.order_by(Study.received_at.desc()).limit(where.limit).offset(where.offset)).all()
    flagged = _flagged_by_study(session, [s.id for s in studies])
    items: list[StudyRow] = [{**_study_json(s), "flagged": flagged.get(s.id)} for s in studies]
    return {"items": items, "total": total, "limit": where.limit, "offset": where.offset}


def get_study(session: Session, study_id: str) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise NotFoundError(f"no study {study_id!r}")
    return study


def study_detail(session: Session, study_id: str) -> StudyDetail:
    """A study with each series: its instances, newest job and result, and its deliveries."""
    study = get_study(session, study_id)
    series_out: list[SeriesRow] = []
    findings = {f.series_uid: f for f in findings_of(session, study_id)}
    for series in sorted(study.series, key=lambda s: s.series_uid):
        job = session.scalars(select(Job).where(Job.series_id == series.id).order_by(Job.created_at.desc())).first()
        count = session.scalar(select(func.count()).where(Instance.series_id == series.id))
        finding = findings.get(series.series_uid)
        series_out.append(
            {
                "series_uid": series.series_uid,
                "modality": series.modality,
                "body_part": series.body_part,
                "instances": count or 0,
                "status": _series_status(job.state if job else None),
                "reason": job.last_error if job and job.state != JobState.DONE else None,
                "progress": job.progress if job and job.state == JobState.RUNNING else None,
                "result": _finding_json(finding) if finding else None,
            }
        )
    deliveries = session.scalars(select(Delivery).where(Delivery.study_id == study_id)).all()
    return {
        **_study_json(study),
        "flagged": any(f.flagged for f in findings.values()) if findings else None,
        "series": series_out,
        "deliveries": [
            {
                "kind": d.kind,
                "destination": d.destination,
                "state": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "delivered_at": _iso(d.delivered_at),
            }
            for d in deliveries
        ],
    }


def findings_of(session: Session, study_id: str) -> list[Finding]:
    """The newest result of each series of a study."""
    rows = session.execute(
        select(Result, Series.series_uid)
        .join(Series, Series.id == Result.series_id)
        .where(Series.study_id == study_id)
        .order_by(Result.created_at)
    ).all()
    latest: dict[str, Finding] = {}
    for result, series_uid in rows:
        latest[series_uid] = Finding(
            series_uid=series_uid,
            task=result.task,
            model_name=result.model_name,
            model_version=result.model_version,
            flagged=result.flagged,
            label=result.label,
            score=result.score,
            threshold=result.threshold,
            probabilities={str(k): float(v) for k, v in result.probabilities.items()},
            created_at=as_utc(result.created_at),
            instance_uid=result.instance_uid,
            instances_screened=result.instances_screened,
            instances_total=result.instances_total,
            operating_points=points_from_json(result.operating_points, result.score, result.threshold),
            seconds=result.seconds,
            summary=result.summary,
        )
    return list(latest.values())


def study_summary(study: Study) -> StudySummary:
    return StudySummary(
        id=study.id,
        study_uid=study.study_uid,
        status=study.status,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        institution=study.institution,
    )


SERIES_STATUS: dict[str | None, str] = {
    None: StudyStatus.RECEIVED,
    JobState.PENDING: StudyStatus.SCREENING,
    JobState.RUNNING: StudyStatus.SCREENING,
    JobState.DONE: StudyStatus.SCREENED,
}
"""A series' status from its newest job's state (unscreenable and failed keep their names)."""


def _series_status(job_state: str | None) -> str:
    return SERIES_STATUS.get(job_state, job_state or StudyStatus.RECEIVED)


def _study_json(study: Study) -> StudyFields:
    return {
        "study_id": study.id,
        "id": study.id,
        "study_uid": study.study_uid,
        "status": study.status,
        "reason": study.status_reason,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "institution": study.institution,
        "sender": study.sender,
        "order_priority": study.order_priority,
        "received_at": as_utc(study.received_at).isoformat(),
        "last_instance_at": as_utc(study.last_instance_at).isoformat(),
        "screened_at": _iso(study.screened_at),
    }


def _finding_json(finding: Finding) -> FindingRow:
    return {
        "task": finding.task,
        "model": {"name": finding.model_name, "version": finding.model_version},
        "flagged": finding.flagged,
        "label": finding.label,
        "score": finding.score,
        "threshold": finding.threshold,
        "probabilities": finding.probabilities,
        "created_at": _iso(finding.created_at),
        "instance_uid": finding.instance_uid,
        "instances_screened": finding.instances_screened,
        "instances_total": finding.instances_total,
        "operating_points": {
            name: {"threshold": p.threshold, "flagged": p.flagged} for name, p in finding.operating_points.items()
        },
        "summary": finding.summary,
    }


def _flagged_by_study(session: Session, study_ids: list[str]) -> dict[str, bool]:
    if not study_ids:
        return {}
    rows = session.execute(
        select(Series.study_id, func.max(Result.flagged.cast(Integer)))
        .join(Result, Result.series_id == Series.id)
        .where(Series.study_id.in_(study_ids))
        .group_by(Series.study_id)
    ).all()
    return {study_id: bool(flag) for study_id, flag in rows}


def preview_files(session: Session, study_id: str, series_uid: str) -> list[tuple[str | None, str]]:
    """``(file name, blob key)`` of what a series preview needs: the DICOM ECG, the whole WFDB
    record, or the first image.

    Raises:
        NotFoundError: no such series in the study.
        InvalidStudyError: the series has no files.
    """
    series = session.scalars(
        select(Series).where(Series.study_id == study_id, Series.series_uid == series_uid)
    ).one_or_none()
    if series is None:
        raise NotFoundError("no such series in this study")
    instances = session.scalars(
        select(Instance)
        .where(Instance.series_id == series.id)
        .order_by(Instance.received_at, Instance.file_name, Instance.sop_instance_uid)
    ).all()
    if not instances:
        raise InvalidStudyError("the series has no files")
    ecg = [i for i in instances if i.sop_class_uid in ECG_SOP_CLASSES]
    if ecg:
        return [(ecg[0].file_name, ecg[0].blob_key)]
    if any((i.file_name or "").lower().endswith(".hea") for i in instances):
        return [(i.file_name, i.blob_key) for i in instances]
    return [(instances[0].file_name, instances[0].blob_key)]
