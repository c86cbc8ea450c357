"""Reading agreement of the double review: the share of co-signed reports the second reader approved
without a return or a change, by worklist and by first reader (the plan asks at least 98 %).

The unit is a co-signed report *version*. It counts as **approved** when

* it was submitted once: every return sends the report back to its first reader, who must submit
  it again (:mod:`prescreen.triage.review`), so a second ``submitted`` signature on the same version
  is a return;
* the text co-signed is the text first submitted (the SHA-256 of the two signatures); and
* it was not amended afterwards by anyone but its first reader (an amendment by the first reader,
  an addendum, is no disagreement of the second).

Otherwise it is ``returned`` and/or ``changed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic (the API's response models) needs it before 3.12

from prescreen.evaluation.metrics import wilson_interval
from prescreen.store.queue import as_utc
from prescreen.store.schema_triage import Report, Signature, User, WorklistItem

AGREEMENT_TARGET = 0.98
"""The required share of remote reads the second reader approves unchanged."""


class AgreementCounts(TypedDict):
    """Co-signed report versions, how many were approved without a return or change, their share
    with its Wilson 95 % interval (null when there are none), and whether the share meets the target."""

    cosigned: int
    approved: int
    returned: int
    changed: int
    share: float | None
    ci_low: float | None
    ci_high: float | None
    meets_target: bool | None


class WorklistAgreement(AgreementCounts):
    """The counts of one worklist."""

    worklist: str


class ReaderAgreement(AgreementCounts):
    """The counts of one first reader (staff, by login and name)."""

    first_reader_id: str
    first_reader: str
    first_reader_name: str


class ReviewAgreement(TypedDict):
    """The agreement overall, by worklist and by first reader, with the target."""

    target: float
    overall: AgreementCounts
    by_worklist: list[WorklistAgreement]
    by_first_reader: list[ReaderAgreement]


@dataclass(frozen=True)
class _Version:
    worklist: str
    first_reader: str
    returned: bool
    changed: bool


def review_agreement(session: Session, since: datetime | None = None) -> ReviewAgreement:
    """The reading agreement of report versions co-signed (at or after ``since``, when given).

    Args:
        session: a session of the migrated database.
        since: count only versions co-signed from this time on.
    """
    versions = _cosigned_versions(session, since)
    by_worklist: dict[str, list[_Version]] = {}
    by_reader: dict[str, list[_Version]] = {}
    for v in versions:
        by_worklist.setdefault(v.worklist, []).append(v)
        by_reader.setdefault(v.first_reader, []).append(v)
    users = {u.id: (u.login, u.name) for u in session.scalars(select(User).where(User.id.in_(list(by_reader))))}
    readers: list[ReaderAgreement] = []
    for user_id, group in by_reader.items():
        login, name = users.get(user_id, (user_id, user_id))
        readers.append({"first_reader_id": user_id, "first_reader": login, "first_reader_name": name, **_counts(group)})
    return {
        "target": AGREEMENT_TARGET,
        "overall": _counts(versions),
        "by_worklist": [{"worklist": w, **_counts(g)} for w, g in sorted(by_worklist.items())],
        "by_first_reader": sorted(readers, key=lambda r: r["first_reader"]),
    }


def _cosigned_versions(session: Session, since: datetime | None) -> list[_Version]:
    cosigned = select(Signature.report_id).where(Signature.kind == "cosigned")
    if since is not None:  # stored in UTC (SQLite keeps no offset): compare in UTC
        cosigned = cosigned.where(Signature.signed_at >= as_utc(since).astimezone(UTC))
    rows = session.execute(
        select(
            Report.id,
            Report.item_id,
            Report.version,
            WorklistItem.worklist,
            Signature.kind,
            Signature.user_id,
            Signature.text_sha256,
        )
        .join(Report, Report.id == Signature.report_id)
        .join(WorklistItem, WorklistItem.id == Report.item_id)
        .where(Signature.report_id.in_(cosigned))
        .order_by(Report.id, Signature.signed_at, Signature.id)
    ).all()
    signatures: dict[str, list[tuple[str, str, str]]] = {}
    where: dict[str, tuple[str, int, str]] = {}
    for report_id, item_id, version, worklist, kind, user_id, digest in rows:
        signatures.setdefault(report_id, []).append((kind, user_id, digest))
        where[report_id] = (item_id, version, worklist)
    amenders = _authors(session, select(Report.item_id).where(Report.id.in_(cosigned)))
    out: list[_Version] = []
    for report_id, signed in signatures.items():
        item_id, version, worklist = where[report_id]
        submitted = [(user, digest) for kind, user, digest in signed if kind == "submitted"]
        cosign = [digest for kind, _, digest in signed if kind == "cosigned"]
        if not submitted or not cosign:
            continue  # not a double-read version (no first reader's submission on record)
        first_reader, first_text = submitted[0]
        amender = amenders.get((item_id, version + 1))
        changed = cosign[-1] != first_text or (amender is not None and amender != first_reader)
        out.append(_Version(worklist, first_reader, len(submitted) > 1, changed))
    return out


def _authors(session: Session, item_ids: Select[Any]) -> dict[tuple[str, int], str]:
    """Who wrote each report version of these items (of a version after the first: who amended)."""
    rows = session.execute(select(Report.item_id, Report.version, Report.author_id).where(Report.item_id.in_(item_ids)))
    return {(item_id, version): author for item_id, version, author in rows}


def _counts(versions: list[_Version]) -> AgreementCounts:
    n = len(versions)
    approved = sum(not v.returned and not v.changed for v in versions)
    low, high = wilson_interval(approved, n)
    share = approved / n if n else None
    return {
        "cosigned": n,
        "approved": approved,
        "returned": sum(v.returned for v in versions),
        "changed": sum(v.changed for v in versions),
        "share": None if share is None else round(share, 4),
        "ci_low": None if math.isnan(low) else round(low, 4),
        "ci_high": None if math.isnan(high) else round(high, 4),
        "meets_target": None if share is None else share >= AGREEMENT_TARGET,
    }
