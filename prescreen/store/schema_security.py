"""Tables of access control and audit: machine clients, sign-in sessions, failed sign-ins, and the
chained audit trail with its signed checkpoints."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from prescreen.store.schema import Base, _now, _uuid


class Client(Base):
    """A machine client of one institution (PACS, modality, edge node) with a hashed API key."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    institution: Mapped[str] = mapped_column(String(128))
    ae_titles: Mapped[list[str]] = mapped_column(JSON, default=list)
    networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: SM3 of the key (the key is 256 random bits: a slow hash adds nothing)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuthSession(Base):
    """One sign-in: its tokens carry its id. Ends on sign-out or after the idle timeout; remembers when
    its user last gave a second factor (step-up)."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_uuid)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    mfa_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SignInFailure(Base):
    """A failed sign-in: the throttle counts these in the database, so it holds across processes."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_login_at", "login", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    login: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AuditEvent(Base):
    """One audit record (DICOM PS3.15 A.5 fields), chained to the one before by its SM3 hash.

    Every field but ``hash`` is covered by the hash, stored as the exact text that was hashed.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_actor_at", "actor", "at"),
        Index("ix_audit_events_study", "study_uid"),
        Index("ix_audit_events_event_at", "event", "at"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(16))
    event_type: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[int] = mapped_column(Integer)
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    address: Mapped[str | None] = mapped_column(String(128))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    patient_hash: Mapped[str | None] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's head (one row): locked by each writer, so records are appended one at a time."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed checkpoint over the chain's head at one moment (SM2, DER, base64)."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(Text)


class SigningKey(Base):
    """A physician's SM2 key pair: the public key in the clear, the private key sealed (SM4-GCM)."""

    __tablename__ = "signing_keys"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16))
    public_pem: Mapped[str] = mapped_column(Text)
    sealed_private: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class KeyringDocument(Base):
    """The keyring shared by the replicas of a service (``PRESCREEN_KEYRING_STORE=database``): one
    row, the JSON document of :class:`prescreen.security.keyring.Keyring` (keys wrapped by the master
    key, which never reaches the database)."""

    __tablename__ = "keyring_documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
