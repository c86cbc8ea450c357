"""SM2 signatures of reports: each physician's key pair, the canonical form of a report version,
signing inside the physician's own sign action, and verification.

* A physician's SM2 key pair is made at their first signature. The public key is stored in the clear;
  the private key sealed (SM4-GCM) under the keyring's data key with the user id as associated data,
  and opened only inside that user's authenticated ``sign`` (:func:`sign_version`).
* The **canonical form** of a report version is compact JSON with sorted keys and UTF-8 kept: the
  study UID, the version, the text, the physician's label and agreement with the AI, the AI finding it
  refers to (task, label, score, flagged), and the first reader (author). The first reader's
  submission and the co-signer's signature are both SM2 signatures (SM3, DER, user id
  ``1234567812345678``) over the same bytes; who signed, as what and when is stored beside each.
  ``openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -digest sm3 -in canonical -sigfile sig.der
  -pkeyopt distid:1234567812345678`` verifies them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from typing_extensions import TypedDict

from prescreen.errors import NotFoundError
from prescreen.security.keyring import Keyring, open_sealed_any
from prescreen.security.sm import Sm2Signer, verify_sm2
from prescreen.store.schema import Study
from prescreen.store.schema_security import SigningKey
from prescreen.store.schema_triage import Report, Signature, User, WorklistItem


def _aad(user_id: str) -> bytes:
    return f"prescreen-sm2:{user_id}".encode()


def signer_of(session: Session, keyring: Keyring, user_id: str) -> tuple[Sm2Signer, SigningKey]:
    """The user's SM2 key pair, made on first use (call only inside the user's own sign action)."""
    row = session.get(SigningKey, user_id, with_for_update=True)
    if row is None:
        signer = Sm2Signer.generate()
        sealed = keyring.seal(signer.private_pem(), _aad(user_id))
        row = SigningKey(
            user_id=user_id,
            key_id=signer.key_id(),
            public_pem=signer.public_pem(),
            sealed_private=base64.b64encode(sealed).decode(),
            created_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()
        return signer, row
    pem = open_sealed_any(keyring, base64.b64decode(row.sealed_private), _aad(user_id))
    return Sm2Signer.from_pem(pem), row


def canonical_report(study: Study, item: WorklistItem, report: Report, author_login: str) -> bytes:
    """The exact bytes every signature of this report version covers."""
    doc = {
        "study_uid": study.study_uid,
        "version": report.version,
        "text": report.text,
        "physician_label": report.physician_label,
        "ai_agrees": report.ai_agrees,
        "ai_finding": {"task": item.task, "label": item.label, "score": item.score, "flagged": item.flagged},
        "author": author_login,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_version(
    session: Session, keyring: Keyring, item: WorklistItem, report: Report, signer_id: str
) -> tuple[bytes, bytes, SigningKey]:
    """The canonical form of ``report`` and the signer's SM2 signature of it."""
    study = session.get(Study, item.study_id)
    author = session.get(User, report.author_id)
    if study is None or author is None:
        raise NotFoundError("the report's study or author is gone")
    canonical = canonical_report(study, item, report, author.login)
    signer, key = signer_of(session, keyring, signer_id)
    return canonical, signer.sign(canonical), key


class SignatureOut(TypedDict):
    signer: str
    role: str
    signed_at: str
    key_id: str
    public_key: str
    signature: str


class SignedReport(TypedDict):
    """A report version as signed: ``canonical`` (base64 of the exact signed bytes) and its signatures."""

    item_id: str
    study_uid: str
    version: int
    status: str
    canonical: str
    signatures: list[SignatureOut]


def signed_report(session: Session, item_id: str, version: int) -> SignedReport:
    """Report ``version`` of an item with its SM2 signatures over its latest canonical form.

    Raises:
        NotFoundError: no such item or version, or a version nobody has signed yet.
    """
    item = session.get(WorklistItem, item_id)
    report = session.scalars(select(Report).where(Report.item_id == item_id, Report.version == version)).one_or_none()
    if item is None or report is None:
        raise NotFoundError(f"no report version {version} of item {item_id!r}")
    signatures = session.scalars(
        select(Signature)
        .where(Signature.report_id == report.id, Signature.sm2_signature.is_not(None))
        .order_by(Signature.signed_at)
    ).all()
    if not signatures:
        raise NotFoundError(f"report version {version} is not signed yet")
    canonical = signatures[-1].canonical or ""
    names = {u.id: u.login for u in session.scalars(select(User).where(User.id.in_([s.user_id for s in signatures])))}
    keys = {k.user_id: k for k in session.scalars(select(SigningKey).where(SigningKey.user_id.in_(names)))}
    study = session.get(Study, item.study_id)
    return {
        "item_id": item_id,
        "study_uid": study.study_uid if study else "",
        "version": version,
        "status": report.status,
        "canonical": canonical,
        "signatures": [
            {
                "signer": names.get(s.user_id, s.user_id),
                "role": "first_reader" if s.kind == "submitted" else "cosigner",
                "signed_at": _utc(s.signed_at),
                "key_id": keys[s.user_id].key_id if s.user_id in keys else "",
                "public_key": keys[s.user_id].public_pem if s.user_id in keys else "",
                "signature": s.sm2_signature or "",
            }
            for s in signatures
            if s.canonical == canonical
        ],
    }


def _utc(at: datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


@dataclass(frozen=True)
class SignatureCheck:
    item_id: str
    version: int
    signer: str
    ok: bool
    reason: str = ""


def verify_study(session: Session, study_uid: str) -> list[SignatureCheck]:
    """Check every signature of every report version of a study: the stored canonical form is the
    one the report's current fields give, and the SM2 signature verifies with the signer's key.

    Raises:
        NotFoundError: no such study.
    """
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()
    if study is None:
        raise NotFoundError(f"no study {study_uid}")
    checks: list[SignatureCheck] = []
    items = session.scalars(select(WorklistItem).where(WorklistItem.study_id == study.id)).all()
    for item in items:
        for report in session.scalars(select(Report).where(Report.item_id == item.id).order_by(Report.version)):
            author = session.get(User, report.author_id)
            expected = canonical_report(study, item, report, author.login if author else "")
            for sig in session.scalars(select(Signature).where(Signature.report_id == report.id)):
                checks.append(_check(session, item.id, report.version, sig, expected))
    return checks


def _check(session: Session, item_id: str, version: int, sig: Signature, expected: bytes) -> SignatureCheck:
    user = session.get(User, sig.user_id)
    who = user.login if user else sig.user_id
    if not sig.sm2_signature or not sig.canonical:
        return SignatureCheck(item_id, version, who, False, "no SM2 signature (signed by an earlier version)")
    key = session.get(SigningKey, sig.user_id)
    if key is None:
        return SignatureCheck(item_id, version, who, False, "the signer's public key is missing")
    signed = base64.b64decode(sig.canonical)
    if not verify_sm2(key.public_pem, signed, base64.b64decode(sig.sm2_signature)):
        return SignatureCheck(item_id, version, who, False, "the SM2 signature does not verify")
    if signed != expected and _is_current(session, sig):
        return SignatureCheck(item_id, version, who, False, "the report was changed after it was signed")
    return SignatureCheck(item_id, version, who, True)


def _is_current(session: Session, sig: Signature) -> bool:
    """Whether ``sig`` is the newest signature of its kind on its report (older ones, before a return,
    covered an earlier text by design)."""
    newest = session.scalars(
        select(Signature.id)
        .where(Signature.report_id == sig.report_id, Signature.kind == sig.kind)
        .order_by(Signature.signed_at.desc())
    ).first()
    return newest == sig.id
