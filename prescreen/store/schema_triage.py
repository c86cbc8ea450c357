"""Tables of the reading side: users, worklist items, report versions, signatures, escalations,
and an audit trail of every action on an item."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from prescreen.store.schema import Base, _now, _uuid
from prescreen.store.sealed_type import SealedText


class User(Base):
    """A person who signs in: login, hashed password, roles; a reader's grade, specialties and the
    institutions they serve (none: every institution); the TOTP second factor."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    login: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(256))
    grade: Mapped[str] = mapped_column(String(32))
    specialties: Mapped[list[str]] = mapped_column(JSON, default=list)
    institution: Mapped[str | None] = mapped_column(String(128))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    roles: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    #: the institutions whose studies a reader sees; empty: all (a central hospital)
    institutions: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    #: sealed at rest (SM4-GCM), like the patient columns
    totp_secret: Mapped[str | None] = mapped_column(SealedText())
    #: set once the user confirmed a first code: from then on the second factor is required
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: the time step of the last code spent for a step-up (or enrolment), and for a sign-in: a code is
    #: never accepted twice for the same purpose
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    totp_last_sign_in_step: Mapped[int | None] = mapped_column(Integer)
    recovery_hashes: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: in every token issued; signing out everywhere bumps it, so older tokens stop working
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class WorklistItem(Base):
    """A study waiting in one worklist (specialty), with its SLA and its reading state."""

    __tablename__ = "worklist_items"
    __table_args__ = (
        UniqueConstraint("study_id", "worklist", name="uq_items_study_worklist"),
        Index("ix_items_open_due", "worklist", "open", "due_at"),
        # the order within a band: score DESC NULLS LAST, then waiting time (migration 0003 writes the
        # NULLS LAST that PostgreSQL needs; SQLite sorts NULLs last in DESC order by itself)
        Index("ix_items_open_rank", "worklist", "open", text("score DESC"), "received_at", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    worklist: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(64))
    task: Mapped[str | None] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(32))
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: True until the report is final: the worklist shows open items only
    open: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="unread")
    first_reader_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    claimed_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    claim_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    return_comment: Mapped[str | None] = mapped_column(Text)
    escalation: Mapped[int] = mapped_column(Integer, default=0)
    ai_agrees: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: bumped by every change; a conditional update on it makes claims race-free
    revision: Mapped[int] = mapped_column(Integer, default=0)


class Report(Base):
    """One version of an item's report; amending a final report adds a version, keeps the old."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("item_id", "version", name="uq_reports_item_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    item_id: Mapped[str] = mapped_column(ForeignKey("worklist_items.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    ai_agrees: Mapped[bool | None] = mapped_column(Boolean)
    #: the physician's own label of the study: one of the task's classes, or "not assessable"
    physician_label: Mapped[str | None] = mapped_column(String(32))
    author_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class Signature(Base):
    """Who signed which report text, when, and as what (``submitted`` or ``cosigned``)."""

    __tablename__ = "signatures"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    #: base64 of the exact bytes signed (:func:`~prescreen.store.signing.canonical_report`)
    canonical: Mapped[str | None] = mapped_column(Text)
    #: base64 of the signer's SM2 signature (DER) of ``canonical``
    sm2_signature: Mapped[str | None] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(16))


class Escalation(Base):
    """An item reached 75 % or 100 % of its SLA target while still open."""

    __tablename__ = "escalations"
    __table_args__ = (UniqueConstraint("item_id", "level", name="uq_escalations_item_level"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    item_id: Mapped[str] = mapped_column(ForeignKey("worklist_items.id", ondelete="CASCADE"), index=True)
    level: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    notified: Mapped[bool] = mapped_column(Boolean, default=False)


class ItemEvent(Base):
    """The audit trail of an item: every action, by whom, when (no report text here)."""

    __tablename__ = "item_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    item_id: Mapped[str] = mapped_column(ForeignKey("worklist_items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
