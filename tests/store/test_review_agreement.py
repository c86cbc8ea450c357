"""``review_agreement``: the share of co-signed reports the second reader approved without a return or
change, overall, by worklist and by first reader, on a real database (SQLite, and PostgreSQL where
available: the ``sessions`` fixture).

Items are made and read the way production does it: studies stored and screened, routed by the
shipped rules, then claimed, drafted, submitted, returned, co-signed and amended by real users
through ``act`` (the double-review state machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, timezone

import pytest
from sqlalchemy.orm import Session, sessionmaker

from prescreen.store.agreement import AGREEMENT_TARGET, review_agreement
from prescreen.store.blobs import BlobStore
from prescreen.store.queue import utcnow
from prescreen.store.reading import DraftText, act
from prescreen.store.users import Principal
from tests.store.test_worklist import (  # noqa: F401  (cheap_password_hashing: an autouse fixture)
    UNSCREENABLE_CT,
    cheap_password_hashing,
    ecg,
    one_item,
    reader,
    screen_study,
    triage,
)

Sessions = sessionmaker[Session]
LEASE = timedelta(minutes=30)
SPECIALTIES = ("cardiology", "general-radiology")


@dataclass(frozen=True)
class Readers:
    ann: Principal  # attending
    bob: Principal  # attending
    carl: Principal  # associate chief
    dana: Principal  # associate chief


@pytest.fixture
def readers(sessions: Sessions) -> Readers:
    return Readers(
        ann=reader(sessions, "ann.attending", "attending", SPECIALTIES),
        bob=reader(sessions, "bob.attending", "attending", SPECIALTIES),
        carl=reader(sessions, "carl.assoc", "associate_chief", SPECIALTIES),
        dana=reader(sessions, "dana.assoc", "associate_chief", SPECIALTIES),
    )


def new_item(sessions: Sessions, blobs: BlobStore, *, unscreenable: bool = False) -> str:
    """A screened ECG (cardiology) or an unscreenable CT (general-radiology) routed into its worklist."""
    study_id = screen_study(sessions, blobs, UNSCREENABLE_CT if unscreenable else ecg("normal", 0.05))
    assert triage(sessions) == 1
    return one_item(sessions, study_id).id


def write(sessions: Sessions, item: str, user: Principal, text: str, *, label: str | None = "normal") -> None:
    act(sessions, item, "claim", user, lease=LEASE)
    act(sessions, item, "draft", user, lease=LEASE, draft=DraftText(text, True, label))


def submit(sessions: Sessions, item: str, user: Principal, text: str, *, label: str | None = "normal") -> None:
    write(sessions, item, user, text, label=label)
    assert act(sessions, item, "sign", user, lease=LEASE) == "awaiting_review"


def cosign(sessions: Sessions, item: str, user: Principal) -> None:
    assert act(sessions, item, "sign", user, lease=LEASE) == "final"


def give_back(sessions: Sessions, item: str, user: Principal) -> None:
    assert act(sessions, item, "return", user, lease=LEASE, comment="please check the rate") == "returned"


def agreement(sessions: Sessions, **kwargs: object) -> dict[str, object]:
    with sessions() as session:
        return dict(review_agreement(session, **kwargs))  # type: ignore[arg-type]


def counts(cosigned: int, approved: int, returned: int, changed: int) -> dict[str, object]:
    return {"cosigned": cosigned, "approved": approved, "returned": returned, "changed": changed}


def test_nothing_cosigned_has_no_share(sessions: Sessions, blobs: BlobStore, readers: Readers) -> None:
    item = new_item(sessions, blobs)
    submit(sessions, item, readers.ann, "Sinus rhythm.")  # awaiting review: not counted yet
    assert agreement(sessions) == {
        "target": AGREEMENT_TARGET,
        "overall": {
            **counts(0, 0, 0, 0),
            "share": None,
            "ci_low": None,
            "ci_high": None,
            "meets_target": None,
        },
        "by_worklist": [],
        "by_first_reader": [],
    }
    assert AGREEMENT_TARGET == 0.98


def test_returns_changes_and_amendments_by_worklist_and_first_reader(
    sessions: Sessions, blobs: BlobStore, readers: Readers
) -> None:
    ann, bob, carl, dana = readers.ann, readers.bob, readers.carl, readers.dana
    # A: approved as submitted
    a = new_item(sessions, blobs)
    submit(sessions, a, ann, "Sinus rhythm.")
    cosign(sessions, a, carl)
    # B: returned, then changed by its first reader before the co-signature
    b = new_item(sessions, blobs)
    submit(sessions, b, ann, "Sinus rhythm.")
    give_back(sessions, b, carl)
    submit(sessions, b, ann, "Sinus rhythm, rate 62.")
    cosign(sessions, b, carl)
    # C: returned, then submitted again unchanged: still a return
    c = new_item(sessions, blobs)
    submit(sessions, c, bob, "Normal ECG.")
    give_back(sessions, c, dana)
    submit(sessions, c, bob, "Normal ECG.")
    cosign(sessions, c, dana)
    # D: co-signed, then amended by another reader (carl): version 1 changed; carl's version 2 is
    # its own double read (carl first reader, dana second), approved
    d = new_item(sessions, blobs)
    submit(sessions, d, bob, "Normal ECG.")
    cosign(sessions, d, dana)
    assert act(sessions, d, "amend", carl, lease=LEASE) == "draft"
    act(sessions, d, "draft", carl, lease=LEASE, draft=DraftText("Normal ECG. Early repolarisation.", True, "normal"))
    assert act(sessions, d, "sign", carl, lease=LEASE) == "awaiting_review"
    cosign(sessions, d, dana)
    # E (general radiology): co-signed, then an addendum by its own first reader: both versions approved
    e = new_item(sessions, blobs, unscreenable=True)
    submit(sessions, e, ann, "CT head: no acute findings.", label=None)
    cosign(sessions, e, carl)
    assert act(sessions, e, "amend", ann, lease=LEASE) == "draft"
    act(sessions, e, "draft", ann, lease=LEASE, draft=DraftText("CT head: no acute findings. Addendum.", None))
    assert act(sessions, e, "sign", ann, lease=LEASE) == "awaiting_review"
    cosign(sessions, e, carl)
    # F: submitted, not yet reviewed: not counted
    submit(sessions, new_item(sessions, blobs), ann, "Sinus rhythm.")

    result = agreement(sessions)
    overall = result["overall"]
    assert isinstance(overall, dict)
    assert {k: overall[k] for k in ("cosigned", "approved", "returned", "changed")} == counts(7, 4, 2, 2)
    assert overall["share"] == round(4 / 7, 4) and overall["meets_target"] is False
    assert 0 < overall["ci_low"] < 4 / 7 < overall["ci_high"] < 1  # type: ignore[operator]
    by_worklist = {row["worklist"]: row for row in result["by_worklist"]}  # type: ignore[attr-defined]
    assert list(by_worklist) == ["cardiology", "general-radiology"]
    assert {k: by_worklist["cardiology"][k] for k in counts(0, 0, 0, 0)} == counts(5, 2, 2, 2)
    assert {k: by_worklist["general-radiology"][k] for k in counts(0, 0, 0, 0)} == counts(2, 2, 0, 0)
    assert by_worklist["general-radiology"]["share"] == 1.0 and by_worklist["general-radiology"]["meets_target"]
    rows = result["by_first_reader"]
    assert isinstance(rows, list)
    assert [(r["first_reader"], r["first_reader_name"], r["first_reader_id"]) for r in rows] == [
        ("ann.attending", "Ann Attending", ann.id),
        ("bob.attending", "Bob Attending", bob.id),
        ("carl.assoc", "Carl Assoc", carl.id),
    ]
    assert [tuple(r[k] for k in counts(0, 0, 0, 0)) for r in rows] == [(4, 3, 1, 1), (2, 0, 1, 1), (1, 1, 0, 0)]


def test_since_counts_only_later_cosignatures(sessions: Sessions, blobs: BlobStore, readers: Readers) -> None:
    early = new_item(sessions, blobs)
    submit(sessions, early, readers.bob, "Normal ECG.")
    give_back(sessions, early, readers.carl)
    submit(sessions, early, readers.bob, "Normal ECG, rate 70.")
    cosign(sessions, early, readers.carl)
    cut = utcnow()
    late = new_item(sessions, blobs)
    submit(sessions, late, readers.ann, "Sinus rhythm.")
    cosign(sessions, late, readers.carl)
    overall = agreement(sessions, since=cut)["overall"]
    assert isinstance(overall, dict)
    assert (overall["cosigned"], overall["approved"], overall["share"]) == (1, 1, 1.0)
    whole = agreement(sessions)["overall"]
    assert isinstance(whole, dict) and (whole["cosigned"], whole["approved"]) == (2, 1)
    # an offset is honoured: the cut as 08:00 at UTC+8 is the same instant
    shifted = cut.astimezone(timezone(timedelta(hours=8)))
    assert agreement(sessions, since=shifted)["overall"] == overall
