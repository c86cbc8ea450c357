"""The database schema: studies, series, instances, screening jobs, results, deliveries.

Plain SQLAlchemy 2 declarative models; Alembic migrations in ``prescreen/store/migrations``
create them (never ``create_all`` outside tests of the schema itself).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from prescreen.domain import DeliveryState, JobState, StudyStatus
from prescreen.store.sealed_type import SealedText


def _uuid() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    """One examination, by its Study Instance UID."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    #: sealed at rest (SM4-GCM envelopes, :class:`~prescreen.store.sealed.SealedText`); plain in Python
    patient_id: Mapped[str | None] = mapped_column(SealedText())
    #: blind index of the patient id: HMAC-SM3 under the pseudonym key, for lookups by patient id
    patient_index: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(SealedText())
    institution: Mapped[str | None] = mapped_column(String(128), index=True)
    sender: Mapped[str | None] = mapped_column(String(64))
    order_priority: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RECEIVED.value, index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
    screened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: set when the sender says the study is whole (an HTTP upload): no quiet period to wait for
    complete_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: when the routing rules last turned this study into worklist items
    triaged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status_reason: Mapped[str | None] = mapped_column(Text)

    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", cascade="all, delete-orphan")


class Instance(Base):
    """One received file; its bytes live in the blob store under ``blob_key``."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    series_id: Mapped[str] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    file_name: Mapped[str | None] = mapped_column(String(128))
    blob_key: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """A screening job of one series; taken by a worker (``FOR UPDATE SKIP LOCKED`` on PostgreSQL)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    series_id: Mapped[str] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: the fraction of a long analysis (Holter) done, while it runs
    progress: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Result(Base):
    """The outcome of a job: at most one per job, so a re-run cannot duplicate it."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("job_id", name="uq_results_job"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    series_id: Mapped[str] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    flagged: Mapped[bool] = mapped_column(Boolean)
    label: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the instance (SOP Instance UID, or file name) whose score is the series' score
    instance_uid: Mapped[str | None] = mapped_column(String(128))
    instances_screened: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    instances_total: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: decision per operating point: {"balanced": {"threshold", "flagged"}, "safety": {...}}
    operating_points: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: seconds the model took on the series
    seconds: Mapped[float | None] = mapped_column(Float)
    #: what a whole-record analysis found (Holter: beats, heart rate, events); null for the others
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Delivery(Base):
    """A result sent to another system (DICOM SR by C-STORE, ...), with its retry log."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(String(128))
    blob_key: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
