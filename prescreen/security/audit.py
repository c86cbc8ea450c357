"""The audit trail's vocabulary and its tamper-evident chain (pure: no database).

Every security-relevant event is one :class:`AuditEntry`. Its fields follow DICOM PS3.15 A.5
(Audit Message): an event id and type from DICOM's codes (DCM 1101xx), the action (Create, Read,
Update, Delete, Execute), the outcome (0 success, 4 minor failure, 8 serious failure), the time, the
active participant (user or client, with its network address or AE title) and the participant
objects (the study UID and a keyed hash of the patient id, never the id or name itself).

Records are chained: record *n* stores ``hash_n = SM3(hash_{n-1} ‖ canonical(record_n))`` with
``hash_0`` all zeros. Changing, deleting, inserting or reordering a record breaks the chain at that
record; a checkpoint (sequence number, hash, time) signed with the service's SM2 key every minute
stops someone who rewrites the whole chain after it. :func:`verify_chain` names the first broken record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from prescreen.security.sm import sm3_hex

GENESIS = "0" * 64


class Action(StrEnum):
    """DICOM EventActionCode."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """DICOM EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class ActorKind(StrEnum):
    USER = "user"
    CLIENT = "client"
    ANONYMOUS = "anonymous"
    SYSTEM = "system"
    OPERATOR = "operator"  # a command run on the server's console (users add, models promote)


@dataclass(frozen=True)
class EventCode:
    """DICOM's coded event: EventID and EventTypeCode (DCM code values)."""

    event_id: str
    event_id_meaning: str
    type_code: str | None
    type_meaning: str | None
    action: Action


class AuditEvent(StrEnum):
    """What happened, in prescreen's words; :data:`CODES` gives DICOM's."""

    SIGN_IN = "sign-in"
    SIGN_IN_FAILED = "sign-in-failed"
    LOCKOUT = "lockout"
    SIGN_OUT = "sign-out"
    SESSION_EXPIRED = "session-expired"
    STEP_UP = "step-up"
    MFA_ENROLLED = "mfa-enrolled"
    ACCESS_DENIED = "access-denied"
    STUDY_READ = "study-read"
    ITEM_READ = "item-read"
    IMAGE_READ = "image-read"
    REPORT_READ = "report-read"
    INSTANCE_RECEIVED = "instance-received"
    INSTANCE_SENT = "instance-sent"
    SCREENED = "screened"
    REPORT_DRAFT = "report-draft"
    REPORT_SIGN = "report-sign"
    REPORT_COSIGN = "report-cosign"
    REPORT_RETURN = "report-return"
    REPORT_AMEND = "report-amend"
    ITEM_CLAIM = "item-claim"
    ITEM_RELEASE = "item-release"
    EXPORT = "export"
    MODEL_CHANGE = "model-change"
    RULES_CHANGE = "rules-change"
    USER_CHANGE = "user-change"
    CLIENT_CHANGE = "client-change"
    SETTING_CHANGE = "setting-change"
    SERVICE_START = "service-start"
    SERVICE_STOP = "service-stop"
    AUDIT_READ = "audit-read"


_AUTH = ("110114", "User Authentication")
_PATIENT = ("110110", "Patient Record")
_ALERT = ("110113", "Security Alert")
_APP = ("110100", "Application Activity")

CODES: dict[AuditEvent, EventCode] = {
    AuditEvent.SIGN_IN: EventCode(*_AUTH, "110122", "Login", Action.EXECUTE),
    AuditEvent.SIGN_IN_FAILED: EventCode(*_AUTH, "110122", "Login", Action.EXECUTE),
    AuditEvent.LOCKOUT: EventCode(*_ALERT, "110126", "Node Authentication", Action.EXECUTE),
    AuditEvent.SIGN_OUT: EventCode(*_AUTH, "110123", "Logout", Action.EXECUTE),
    AuditEvent.SESSION_EXPIRED: EventCode(*_AUTH, "110123", "Logout", Action.EXECUTE),
    AuditEvent.STEP_UP: EventCode(*_AUTH, "110122", "Login", Action.EXECUTE),
    AuditEvent.MFA_ENROLLED: EventCode(*_ALERT, "110137", "User security Attributes Changed", Action.UPDATE),
    AuditEvent.ACCESS_DENIED: EventCode(*_ALERT, "110132", "Use of a restricted function", Action.EXECUTE),
    AuditEvent.STUDY_READ: EventCode(*_PATIENT, None, None, Action.READ),
    AuditEvent.ITEM_READ: EventCode(*_PATIENT, None, None, Action.READ),
    AuditEvent.IMAGE_READ: EventCode("110103", "DICOM Instances Accessed", None, None, Action.READ),
    AuditEvent.REPORT_READ: EventCode(*_PATIENT, None, None, Action.READ),
    AuditEvent.INSTANCE_RECEIVED: EventCode("110104", "DICOM Instances Transferred", None, None, Action.CREATE),
    AuditEvent.INSTANCE_SENT: EventCode("110104", "DICOM Instances Transferred", None, None, Action.READ),
    AuditEvent.SCREENED: EventCode(*_PATIENT, None, None, Action.CREATE),
    AuditEvent.REPORT_DRAFT: EventCode(*_PATIENT, None, None, Action.UPDATE),
    AuditEvent.REPORT_SIGN: EventCode(*_PATIENT, None, None, Action.UPDATE),
    AuditEvent.REPORT_COSIGN: EventCode(*_PATIENT, None, None, Action.UPDATE),
    AuditEvent.REPORT_RETURN: EventCode(*_PATIENT, None, None, Action.UPDATE),
    AuditEvent.REPORT_AMEND: EventCode(*_PATIENT, None, None, Action.UPDATE),
    AuditEvent.ITEM_CLAIM: EventCode(*_PATIENT, None, None, Action.UPDATE),
    AuditEvent.ITEM_RELEASE: EventCode(*_PATIENT, None, None, Action.UPDATE),
    AuditEvent.EXPORT: EventCode("110106", "Export", None, None, Action.READ),
    AuditEvent.MODEL_CHANGE: EventCode(*_ALERT, "110131", "Software Configuration", Action.EXECUTE),
    AuditEvent.RULES_CHANGE: EventCode(*_ALERT, "110131", "Software Configuration", Action.EXECUTE),
    AuditEvent.USER_CHANGE: EventCode(*_ALERT, "110137", "User security Attributes Changed", Action.UPDATE),
    AuditEvent.CLIENT_CHANGE: EventCode(*_ALERT, "110129", "Security Configuration", Action.UPDATE),
    AuditEvent.SETTING_CHANGE: EventCode(*_ALERT, "110129", "Security Configuration", Action.UPDATE),
    AuditEvent.SERVICE_START: EventCode(*_APP, "110120", "Application Start", Action.EXECUTE),
    AuditEvent.SERVICE_STOP: EventCode(*_APP, "110121", "Application Stop", Action.EXECUTE),
    AuditEvent.AUDIT_READ: EventCode("110101", "Audit Log Used", None, None, Action.READ),
}


@dataclass(frozen=True)
class Actor:
    """The active participant: who did it, and from where (IP address or AE title)."""

    kind: ActorKind
    name: str
    address: str | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls(ActorKind.SYSTEM, "prescreen")


@dataclass(frozen=True)
class AuditEntry:
    """One event to record (the store adds its sequence number, time and chain hash)."""

    event: AuditEvent
    actor: Actor
    outcome: Outcome = Outcome.SUCCESS
    study_uid: str | None = None
    patient_hash: str | None = None
    object_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """A stored record, as the chain hashes it: every field but ``hash``, in this order."""

    seq: int
    at: str
    event: str
    event_id: str
    event_type: str | None
    action: str
    outcome: int
    actor_kind: str
    actor: str
    address: str | None
    study_uid: str | None
    patient_hash: str | None
    object_id: str | None
    detail: str
    prev_hash: str
    hash: str


def timestamp(at: datetime | None = None) -> str:
    """A record's time: UTC, ISO 8601 with microseconds and ``Z`` (stored and hashed as text)."""
    at = at or datetime.now(UTC)
    at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_detail(detail: Mapping[str, Any]) -> str:
    """The detail as stored: compact JSON, sorted keys, UTF-8 kept."""
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical(record: AuditRecord) -> bytes:
    """The bytes a record's hash covers: every field except the hash, in declaration order, as a JSON
    array (a field added to :class:`AuditRecord` is covered without another line here)."""
    covered = [getattr(record, f.name) for f in fields(record) if f.name != "hash"]
    return json.dumps(covered, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(record: AuditRecord) -> str:
    """``SM3(prev_hash ‖ canonical(record))``, hex."""
    return sm3_hex(bytes.fromhex(record.prev_hash) + canonical(record))


def new_record(seq: int, prev_hash: str, entry: AuditEntry, at: datetime | None = None) -> AuditRecord:
    """The record that ``entry`` becomes at position ``seq`` after a record hashed ``prev_hash``."""
    code = CODES[entry.event]
    draft = AuditRecord(
        seq=seq,
        at=timestamp(at),
        event=entry.event.value,
        event_id=code.event_id,
        event_type=code.type_code,
        action=code.action.value,
        outcome=int(entry.outcome),
        actor_kind=entry.actor.kind.value,
        actor=entry.actor.name,
        address=entry.actor.address,
        study_uid=entry.study_uid,
        patient_hash=entry.patient_hash,
        object_id=entry.object_id,
        detail=canonical_detail(entry.detail),
        prev_hash=prev_hash,
        hash="",
    )
    return AuditRecord(**{**draft.__dict__, "hash": chain_hash(draft)})


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: "the record at ``seq`` hashes to ``hash``", made at ``at``."""

    seq: int
    hash: str
    at: str
    key_id: str
    signature: str  # base64 DER

    def message(self) -> bytes:
        """The exact bytes signed."""
        return f"prescreen-audit-checkpoint\n{self.seq}\n{self.hash}\n{self.at}\n".encode()


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`verify_chain`: ``ok``, or the first broken record and why."""

    ok: bool
    records: int
    checkpoints: int
    broken_seq: int | None = None
    reason: str = ""


def verify_chain(
    records: Iterable[AuditRecord],
    checkpoints: Iterable[Checkpoint] = (),
    signature_ok: Any = None,
) -> Verdict:
    """Check a trail from its first record.

    Args:
        records: every record, in ``seq`` order.
        checkpoints: signed checkpoints; each must name a record that exists and hashes as signed.
        signature_ok: ``f(checkpoint) -> bool`` checking a checkpoint's signature.

    Returns:
        The verdict: the first record whose sequence number, back link or hash is wrong, or the
        first checkpoint that is forged or names a record that is missing or different.
    """
    hashes: dict[int, str] = {}
    prev = GENESIS
    expected = 1
    count = 0
    for record in records:
        count += 1
        if record.seq != expected:
            return Verdict(False, count, 0, expected, f"record {expected} is missing (found {record.seq} next)")
        if record.prev_hash != prev:
            return Verdict(False, count, 0, record.seq, f"record {record.seq} does not link to record {record.seq - 1}")
        if chain_hash(record) != record.hash:
            return Verdict(False, count, 0, record.seq, f"record {record.seq} was changed after it was written")
        hashes[record.seq] = record.hash
        prev = record.hash
        expected += 1
    n_checkpoints = 0
    for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
        n_checkpoints += 1
        if signature_ok is not None and not signature_ok(checkpoint):
            return Verdict(
                False,
                count,
                n_checkpoints,
                checkpoint.seq,
                f"checkpoint at record {checkpoint.seq} has a signature that does not verify",
            )
        if checkpoint.seq == 0:
            continue
        if checkpoint.seq not in hashes:
            return Verdict(
                False,
                count,
                n_checkpoints,
                checkpoint.seq,
                f"record {checkpoint.seq}, signed in a checkpoint at {checkpoint.at}, is missing",
            )
        if hashes[checkpoint.seq] != checkpoint.hash:
            return Verdict(
                False,
                count,
                n_checkpoints,
                checkpoint.seq,
                f"record {checkpoint.seq} differs from the one signed in the checkpoint at {checkpoint.at}",
            )
    return Verdict(True, count, n_checkpoints)
