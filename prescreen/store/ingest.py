"""Storing received studies: the bytes go durably into the blob store first, then one
transaction records study, series and instance. Only after both may the sender be told.

The same SOP Instance UID twice is stored once (the second is reported as a duplicate). A
late instance re-opens its study (``status`` back to ``received``, quiet period restarted).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from prescreen.config import get_settings
from prescreen.domain import StudyStatus
from prescreen.errors import InvalidStudyError, MissingIdentifierError
from prescreen.security.audit import Actor, ActorKind, AuditEntry, AuditEvent
from prescreen.security.keys import patient_pseudonym
from prescreen.store import audit
from prescreen.store.blobs import BlobStore
from prescreen.store.schema import Instance, Series, Study

if TYPE_CHECKING:
    from prescreen.store.group_commit import GroupCommit


@dataclass(frozen=True)
class Received:
    """What was stored for one instance."""

    study_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    duplicate: bool


@dataclass(frozen=True)
class InstanceMeta:
    """The identifiers and context of one instance, from its DICOM header or the upload form."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    institution: str | None = None
    sender: str | None = None
    order_priority: str | None = None
    file_name: str | None = None


def dicom_meta(data: bytes, sender: str | None = None, institution: str | None = None) -> InstanceMeta:
    """Identifiers of a DICOM instance.

    Raises:
        InvalidStudyError: not DICOM, or a UID the store needs is missing.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        return _meta_of(ds, sender, institution)
    except InvalidStudyError:
        raise
    except InvalidDicomError as exc:
        raise InvalidStudyError(f"not a DICOM file ({type(exc).__name__})") from exc
    except Exception as exc:  # pydicom decodes lazily and raises many kinds (unknown VR, bad lengths, ...)
        raise InvalidStudyError(f"a DICOM file that cannot be decoded ({type(exc).__name__})") from exc


def _meta_of(ds: pydicom.Dataset, sender: str | None, institution: str | None) -> InstanceMeta:
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(k)]
    if missing:
        raise MissingIdentifierError(f"DICOM instance lacks {', '.join(missing)}")
    limits = {"StudyInstanceUID": 64, "SeriesInstanceUID": 64, "SOPInstanceUID": 64, "SOPClassUID": 64}
    limits |= {"Modality": 16, "BodyPartExamined": 64}
    too_long = [k for k, n in limits.items() if len(str(ds.get(k, ""))) > n]
    if too_long:
        raise MissingIdentifierError(f"DICOM instance has a {too_long[0]} longer than {limits[too_long[0]]} characters")
    return InstanceMeta(
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.get("SOPClassUID", "")) or None,
        modality=str(ds.get("Modality", "")) or None,
        body_part=str(ds.get("BodyPartExamined", "")).upper() or None,
        patient_id=str(ds.get("PatientID", ""))[:64] or None,
        patient_name=str(ds.get("PatientName", ""))[:128] or None,
        institution=(institution or str(ds.get("InstitutionName", "")))[:128] or None,
        sender=sender,
    )


def store_instance(
    sessions: sessionmaker[Session], blobs: BlobStore, data: bytes, meta: InstanceMeta, actor: Actor | None = None
) -> Received:
    """Persist one instance: blob (fsynced) first, then the rows and the audit record of its receipt
    (by ``actor``: the sending client, user or AE), in one transaction.

    Two senders creating the same new study or series at once collide on a unique key; the
    loser retries and finds the winner's rows.
    """
    key = blobs.put(data)
    for attempt in range(3):
        try:
            return _record_instance(sessions, key, len(data), meta, actor)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _record_instance(
    sessions: sessionmaker[Session], key: str, size: int, meta: InstanceMeta, actor: Actor | None
) -> Received:
    with sessions.begin() as session:
        return record_in(session, key, size, meta, actor)


def record_in(
    session: Session, key: str, size: int, meta: InstanceMeta, actor: Actor | None, now: datetime | None = None
) -> Received:
    """Record one instance whose blob is stored under ``key`` in the open transaction ``session``:
    its study and series (made when new), the instance (unless its SOP Instance UID is known: a
    duplicate) and the audit record of its receipt.

    Raises:
        MissingIdentifierError: the Series Instance UID belongs to another study.
        IntegrityError: another transaction created the same study, series or instance meanwhile.
    """
    now = now or datetime.now(UTC)
    # the sealed patient fields stay unread (not decrypted): an instance needs only the pseudonym
    unsealed = defer(Study.patient_id), defer(Study.patient_name)
    study = session.scalars(select(Study).options(*unsealed).where(Study.study_uid == meta.study_uid)).one_or_none()
    if study is None:
        study = Study(
            study_uid=meta.study_uid,
            received_at=now,
            patient_id=meta.patient_id,
            patient_index=patient_pseudonym(get_settings(), meta.patient_id),
            patient_name=meta.patient_name,
            institution=meta.institution,
            sender=meta.sender,
            order_priority=meta.order_priority,
        )
        session.add(study)
        session.flush()
    series = session.scalars(select(Series).where(Series.series_uid == meta.series_uid)).one_or_none()
    if series is None:
        series = Series(study_id=study.id, series_uid=meta.series_uid, modality=meta.modality, body_part=meta.body_part)
        session.add(series)
        session.flush()
    elif series.study_id != study.id:  # rolls the whole transaction back: nothing half-stored
        raise MissingIdentifierError("the Series Instance UID belongs to another study")
    exists = session.scalars(
        select(Instance.id).where(Instance.sop_instance_uid == meta.sop_instance_uid)
    ).one_or_none()
    if exists is None:
        session.add(
            Instance(
                series_id=series.id,
                sop_instance_uid=meta.sop_instance_uid,
                sop_class_uid=meta.sop_class_uid,
                file_name=meta.file_name,
                blob_key=key,
                size_bytes=size,
            )
        )
        study.status = StudyStatus.RECEIVED  # a late instance re-opens a screened study
        study.last_instance_at = now
        audit.record(
            session,
            AuditEntry(
                AuditEvent.INSTANCE_RECEIVED,
                actor or Actor(ActorKind.ANONYMOUS, meta.sender or "unknown"),
                study_uid=study.study_uid,
                patient_hash=study.patient_index or patient_pseudonym(get_settings(), study.patient_id),
                object_id=meta.sop_instance_uid,
                detail={"sop_class": meta.sop_class_uid, "bytes": size, "via": meta.sender},
            ),
        )
    return Received(study.id, study.study_uid, series.series_uid, meta.sop_instance_uid, exists is not None)


def store_files(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    files: Mapping[str, bytes],
    *,
    modality: str | None = None,
    institution: str | None = None,
    sender: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    order_priority: str | None = None,
    actor: Actor | None = None,
) -> list[Received]:
    """Persist an HTTP upload: each DICOM file by its own UIDs; other files (a WFDB record) as
    one new study and series with generated UIDs, one instance per file."""
    if not files:
        raise InvalidStudyError("no file was sent")
    context = {"institution": institution, "sender": sender}
    out: list[Received] = []
    plain = {n: d for n, d in files.items() if not (len(d) >= 132 and d[128:132] == b"DICM")}
    # every DICOM file is read before any is stored: a bad file refuses the upload, all of it
    metas = {name: dicom_meta(data, **context) for name, data in files.items() if name not in plain}
    for name, meta in metas.items():
        out.append(store_instance(sessions, blobs, files[name], meta, actor))
    if plain:
        study_uid, series_uid = generate_uid(), generate_uid()
        if modality is None and any(name.lower().endswith(".hea") for name in plain):
            modality = "ECG"
        for name, data in sorted(plain.items()):
            meta = InstanceMeta(
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid=generate_uid(),
                modality=modality,
                patient_id=patient_id,
                patient_name=patient_name,
                order_priority=order_priority,
                file_name=name,
                **context,
            )
            out.append(store_instance(sessions, blobs, data, meta, actor))
        with sessions.begin() as session:  # the upload is the whole study: no quiet period
            session.execute(update(Study).where(Study.study_uid == study_uid).values(complete_at=datetime.now(UTC)))
    return out


class Ingestor:
    """The one entry point of received data: DICOM instances (listener, STOW-RS, upload) and
    HTTP uploads. Every method returns only after the data is durable.

    Args:
        sessions: session factory of the migrated database.
        blobs: where the received bytes go.
        group: DICOM instances from concurrent senders are made durable together through it
            (:mod:`prescreen.store.group_commit`); none: each on its own.
    """

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, group: GroupCommit | None = None) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.group = group

    def store_dicom(
        self, data: bytes, *, sender: str | None = None, institution: str | None = None, actor: Actor | None = None
    ) -> Received:
        """Store one DICOM Part 10 file (raises ``InvalidStudyError`` when it does not parse)."""
        meta = dicom_meta(data, sender=sender, institution=institution)
        if self.group is not None:
            return self.group.store(data, meta, actor)
        return store_instance(self.sessions, self.blobs, data, meta, actor)

    def store_dicoms(
        self, items: Sequence[tuple[bytes, InstanceMeta]], actor: Actor | None = None
    ) -> list[Received | BaseException]:
        """Store several parsed DICOM files (one STOW-RS request) together; in order, each one's
        :class:`Received` or the error that refused it (the others are stored all the same)."""
        if self.group is not None:
            return self.group.store_many([(data, meta, actor) for data, meta in items])
        out: list[Received | BaseException] = []
        for data, meta in items:
            try:
                out.append(store_instance(self.sessions, self.blobs, data, meta, actor))
            except Exception as exc:
                out.append(exc)
        return out

    def store_upload(
        self, files: Mapping[str, bytes], actor: Actor | None = None, **context: str | None
    ) -> list[Received]:
        """Store an HTTP upload (see :func:`store_files`)."""
        return store_files(self.sessions, self.blobs, files, actor=actor, **context)
