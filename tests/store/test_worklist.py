"""Worklists in the database, on SQLite and PostgreSQL (``database_url``): screened studies become
items through the shipped routing rules, worklists are ordered by aged priority, readers claim,
draft, sign, return and amend through the double-review state machine, concurrent claims have one
winner (threads, and processes on one database), SLA escalations and turnaround statistics.

Rows are made the way production makes them: a study is stored (``store_files`` /
``store_instance``), completed, its jobs claimed and finished with a result, then routed with
``triage_pending``. Only times (received, finalized, lease expiry) are written directly, to
control the clock.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.domain import Finding, JobState
from prescreen.errors import ConflictError, ForbiddenError, StudyTooLargeError
from prescreen.pipeline.triage import triage_pending
from prescreen.store import users as users_module
from prescreen.store.blobs import BlobStore
from prescreen.store.db import make_engine, session_factory
from prescreen.store.ingest import InstanceMeta, store_files, store_instance
from prescreen.store.queue import (
    Outcome,
    as_utc,
    claim_job,
    complete_studies,
    finish_job,
    utcnow,
    worker_name,
)
from prescreen.store.reading import DraftText, act, item_detail
from prescreen.store.schema import Series, Study
from prescreen.store.schema_triage import Escalation, ItemEvent, Report, Signature, WorklistItem
from prescreen.store.sla import record_escalations, turnaround_stats
from prescreen.store.users import Principal, add_user
from prescreen.store.worklist import list_worklist
from prescreen.triage.priority import Priority, SlaTargets
from prescreen.triage.rules import load_default_rules

Sessions = sessionmaker[Session]
TARGETS = SlaTargets()
LEASE = timedelta(minutes=30)
PASSWORD = "pw-long-enough"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 with production cost takes ~0.15 s a user; these tests make many users."""
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def new_uid() -> str:
    return f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**20}"


@dataclass(frozen=True)
class Screen:
    """One series of a study and what the (fake) model said about it; ``task`` None = unscreenable."""

    modality: str
    task: str | None = None
    label: str | None = None
    score: float | None = None
    flagged: bool | None = None


def ecg(label: str, score: float) -> Screen:
    return Screen("ECG", "ecg-rhythm", label, score, label != "normal")


def breast_us(label: str, score: float) -> Screen:
    return Screen("US", "breast-us", label, score, label == "malignant")


def chest_xray(label: str, score: float, flagged: bool) -> Screen:
    return Screen("CR", "chest-xray", label, score, flagged)


UNSCREENABLE_CT = Screen("CT")


def escalate(sessions: Sessions, targets: SlaTargets, now: datetime | None = None) -> list[dict[str, Any]]:
    """The escalations recorded now, as the webhook receives them."""
    return [asdict(e) for e in record_escalations(sessions, targets, now=now)]


def _outcome(spec: Screen) -> Outcome:
    if spec.task is None:
        return Outcome(JobState.UNSCREENABLE, reason=f"no model screens {spec.modality}")
    assert spec.label is not None and spec.score is not None
    return Outcome(
        JobState.DONE,
        finding=Finding(
            task=spec.task,
            model_name=f"fake-{spec.task}",
            model_version="1",
            flagged=bool(spec.flagged),
            label=spec.label,
            score=spec.score,
            threshold=0.5,
            probabilities={spec.label: spec.score},
        ),
    )


def _screen_round(sessions: Sessions, study_id: str, specs: dict[str, Screen]) -> str:
    """Complete the study, then run every job like a worker with the given outcomes; returns its status."""
    assert study_id in complete_studies(sessions, 0.0, now=utcnow() + timedelta(seconds=1))
    worker, status = worker_name(), None
    while (job := claim_job(sessions, worker, lease_seconds=60)) is not None:
        assert job.study_id == study_id
        status = finish_job(sessions, job, worker, _outcome(specs[job.series.series_uid])) or status
    # the round's last job settles the study: screened when a model screened any series of it
    assert status == ("screened" if any(spec.task is not None for spec in specs.values()) else "unscreenable")
    return status


def screen_study(
    sessions: Sessions,
    blobs: BlobStore,
    *series: Screen,
    order_priority: str | None = None,
    received_at: datetime | None = None,
) -> str:
    """Store a study (an upload for one series, DICOM-like instances for several), screen it; its id.

    ``received_at`` then moves the study's receipt time (the clock of the SLA) to a known value.
    """
    if len(series) == 1:
        token = uuid.uuid4().hex.encode()
        stored = store_files(
            sessions,
            blobs,
            {"rec.hea": b"rec 1 500 5000\n" + token, "rec.dat": b"\x00\x01" * 64 + token},
            modality=series[0].modality,
            order_priority=order_priority,
            patient_id="P-" + token.decode()[:8],
        )
        study_id, specs = stored[0].study_id, {stored[0].series_uid: series[0]}
    else:
        study_uid, specs = new_uid(), {}
        for spec in series:
            series_uid, sop = new_uid(), new_uid()
            meta = InstanceMeta(
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid=sop,
                modality=spec.modality,
                order_priority=order_priority,
                file_name=f"{sop}.dcm",
            )
            study_id = store_instance(sessions, blobs, f"bytes of {sop}".encode(), meta).study_id
            specs[series_uid] = spec
    _screen_round(sessions, study_id, specs)
    if received_at is not None:
        with sessions.begin() as s:
            s.execute(update(Study).where(Study.id == study_id).values(received_at=received_at))
    return study_id


def rescreen(sessions: Sessions, blobs: BlobStore, study_id: str, spec: Screen) -> None:
    """A late instance re-opens the (one-series) study; the new round ends with ``spec``'s result."""
    with sessions() as s:
        study = s.get(Study, study_id)
        assert study is not None
        series = s.scalars(select(Series).where(Series.study_id == study_id)).one()
        study_uid, series_uid = study.study_uid, series.series_uid
    sop = new_uid()
    meta = InstanceMeta(study_uid, series_uid, sop, modality=spec.modality, file_name=f"{sop}.dat")
    store_instance(sessions, blobs, f"late {sop}".encode(), meta)
    _screen_round(sessions, study_id, {series_uid: spec})


def triage(sessions: Sessions) -> int:
    return triage_pending(sessions, load_default_rules(), TARGETS)


def items_of(sessions: Sessions, study_id: str | None = None) -> list[WorklistItem]:
    with sessions() as s:
        query = select(WorklistItem).order_by(WorklistItem.worklist)
        if study_id is not None:
            query = query.where(WorklistItem.study_id == study_id)
        return list(s.scalars(query))


def one_item(sessions: Sessions, study_id: str) -> WorklistItem:
    found = items_of(sessions, study_id)
    assert len(found) == 1, [(i.worklist, i.priority) for i in found]
    return found[0]


def reload(sessions: Sessions, item_id: str) -> WorklistItem:
    with sessions() as s:
        item = s.get(WorklistItem, item_id)
        assert item is not None
        return item


def reports_of(sessions: Sessions, item_id: str) -> list[Report]:
    with sessions() as s:
        return list(s.scalars(select(Report).where(Report.item_id == item_id).order_by(Report.version)))


def signatures_of(sessions: Sessions, report_id: str) -> list[Signature]:
    with sessions() as s:
        return list(s.scalars(select(Signature).where(Signature.report_id == report_id).order_by(Signature.signed_at)))


def count(sessions: Sessions, model: type[Any], *where: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def set_item(sessions: Sessions, item_id: str, **values: Any) -> None:
    with sessions.begin() as s:
        s.execute(update(WorklistItem).where(WorklistItem.id == item_id).values(**values))


def reader(sessions: Sessions, login: str, grade: str, specialties: tuple[str, ...] = ("cardiology",)) -> Principal:
    return add_user(
        sessions,
        login=login,
        name=login.replace(".", " ").title(),
        password=PASSWORD,
        grade=grade,
        specialties=specialties,
    )


@dataclass(frozen=True)
class Team:
    attending: Principal
    attending2: Principal
    assoc: Principal
    resident: Principal
    sono: Principal


@pytest.fixture
def team(sessions: Sessions) -> Team:
    return Team(
        attending=reader(sessions, "ann.attending", "attending"),
        attending2=reader(sessions, "bob.attending", "attending"),
        assoc=reader(sessions, "cy.assoc", "associate_chief"),
        resident=reader(sessions, "dee.resident", "resident"),
        sono=reader(sessions, "eve.sono", "attending", ("sonography",)),
    )


@pytest.fixture
def af_item(sessions: Sessions, blobs: BlobStore) -> str:
    """An unread cardiology item: an ECG the model calls AF with 0.93."""
    study_id = screen_study(sessions, blobs, ecg("af", 0.93))
    assert triage(sessions) == 1
    return one_item(sessions, study_id).id


def finalize(sessions: Sessions, item_id: str, first: Principal, second: Principal, text: str = "AF, rate 110") -> None:
    assert act(sessions, item_id, "claim", first, lease=LEASE) == "claimed"
    assert act(sessions, item_id, "draft", first, lease=LEASE, draft=DraftText(text, True, "af")) == "draft"
    assert act(sessions, item_id, "sign", first, lease=LEASE) == "awaiting_review"
    assert act(sessions, item_id, "sign", second, lease=LEASE) == "final"


# --------------------------------------------------------------------------- routing


def test_af_ecg_becomes_a_stat_cardiology_item_due_after_the_stat_target(sessions: Sessions, blobs: BlobStore) -> None:
    received = utcnow().replace(microsecond=0) - timedelta(minutes=3)
    study_id = screen_study(sessions, blobs, ecg("af", 0.93), received_at=received)
    assert triage(sessions) == 1
    item = one_item(sessions, study_id)
    assert (item.worklist, item.priority, item.rule) == ("cardiology", "stat", "ecg-af-confident")
    assert (item.task, item.label, item.flagged) == ("ecg-rhythm", "af", True)
    assert item.score == pytest.approx(0.93)
    assert (item.state, item.open, item.escalation) == ("unread", True, 0)
    assert as_utc(item.received_at) == received
    assert as_utc(item.due_at) == received + TARGETS.stat


@pytest.mark.parametrize(
    ("spec", "worklist", "priority", "rule"),
    [
        (ecg("af", 0.6), "cardiology", "urgent", "ecg-flagged"),
        (ecg("normal", 0.05), "cardiology", "routine", "ecg"),
        (ecg("noisy", 0.8), "ecg-repeat", "urgent", "noisy-ecg"),
        (breast_us("malignant", 0.7), "sonography", "urgent", "breast-us-flagged"),
        (breast_us("benign", 0.2), "sonography", "routine", "breast-us"),
        (UNSCREENABLE_CT, "general-radiology", "routine", "not-screened"),
    ],
)
def test_screened_studies_are_routed_by_the_default_rules(
    sessions: Sessions, blobs: BlobStore, spec: Screen, worklist: str, priority: str, rule: str
) -> None:
    study_id = screen_study(sessions, blobs, spec)
    assert triage(sessions) == 1
    item = one_item(sessions, study_id)
    assert (item.worklist, item.priority, item.rule) == (worklist, priority, rule)
    assert as_utc(item.due_at) - as_utc(item.received_at) == TARGETS.target(priority)  # type: ignore[arg-type]
    assert (item.task, item.label, item.score) == (spec.task, spec.label, spec.score)


@pytest.mark.parametrize(("order", "priority"), [("STAT", "stat"), ("HIGH", "urgent"), ("ROUTINE", "routine")])
def test_the_order_priority_raises_the_routed_priority(
    sessions: Sessions, blobs: BlobStore, order: str, priority: str
) -> None:
    study_id = screen_study(sessions, blobs, breast_us("benign", 0.1), order_priority=order)
    triage(sessions)
    item = one_item(sessions, study_id)
    assert (item.worklist, item.priority, item.rule) == ("sonography", priority, "breast-us")
    assert as_utc(item.due_at) == as_utc(item.received_at) + TARGETS.target(priority)  # type: ignore[arg-type]


def test_a_stat_order_makes_an_unscreened_study_stat(sessions: Sessions, blobs: BlobStore) -> None:
    study_id = screen_study(sessions, blobs, UNSCREENABLE_CT, order_priority="STAT")
    triage(sessions)
    assert one_item(sessions, study_id).priority == "stat"


def test_triage_is_idempotent(sessions: Sessions, blobs: BlobStore) -> None:
    first = screen_study(sessions, blobs, ecg("af", 0.93))
    second = screen_study(sessions, blobs, UNSCREENABLE_CT)
    assert triage(sessions) == 2
    before = [(i.id, i.priority, i.due_at, i.revision) for i in items_of(sessions)]
    assert len(before) == 2
    assert triage(sessions) == 0
    assert triage(sessions) == 0
    assert [(i.id, i.priority, i.due_at, i.revision) for i in items_of(sessions)] == before
    assert {i.study_id for i in items_of(sessions)} == {first, second}


def test_a_rescreened_study_updates_its_open_item_instead_of_adding_one(sessions: Sessions, blobs: BlobStore) -> None:
    received = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    study_id = screen_study(sessions, blobs, ecg("af", 0.6), received_at=received)
    triage(sessions)
    first = one_item(sessions, study_id)
    assert (first.priority, first.rule, as_utc(first.due_at)) == ("urgent", "ecg-flagged", received + TARGETS.urgent)

    rescreen(sessions, blobs, study_id, ecg("af", 0.95))  # a new round, more urgent
    assert triage(sessions) == 1
    again = one_item(sessions, study_id)
    assert again.id == first.id
    assert (again.priority, again.rule) == ("stat", "ecg-af-confident")
    assert again.score == pytest.approx(0.95)
    assert as_utc(again.due_at) == received + TARGETS.stat
    assert triage(sessions) == 0

    rescreen(sessions, blobs, study_id, ecg("af", 0.6))  # less urgent again: the priority is kept
    assert triage(sessions) == 1
    kept = one_item(sessions, study_id)
    assert (kept.id, kept.priority, as_utc(kept.due_at)) == (first.id, "stat", received + TARGETS.stat)


def test_a_study_with_series_in_two_worklists_gets_one_item_in_each(sessions: Sessions, blobs: BlobStore) -> None:
    study_id = screen_study(sessions, blobs, chest_xray("effusion", 0.9, True), UNSCREENABLE_CT)
    assert triage(sessions) == 1
    items = {i.worklist: i for i in items_of(sessions, study_id)}
    assert sorted(items) == ["general-radiology", "thoracic-radiology"]
    assert (items["thoracic-radiology"].priority, items["thoracic-radiology"].rule) == ("urgent", "chest-xray-flagged")
    assert (items["general-radiology"].priority, items["general-radiology"].rule) == ("routine", "not-screened")
    assert items["thoracic-radiology"].score == pytest.approx(0.9)


def test_each_item_carries_the_ai_result_of_the_series_routed_to_it(sessions: Sessions, blobs: BlobStore) -> None:
    study_id = screen_study(sessions, blobs, chest_xray("effusion", 0.9, True), UNSCREENABLE_CT)
    triage(sessions)
    general = next(i for i in items_of(sessions, study_id) if i.worklist == "general-radiology")
    assert (general.task, general.label, general.flagged, general.score) == (None, None, None, None)


# --------------------------------------------------------------------------- ordering


def test_worklist_order_is_aged_band_then_score_then_waiting_time(sessions: Sessions, blobs: BlobStore) -> None:
    now = utcnow().replace(microsecond=0)
    made = {
        # name: (result, received how long before now)
        "old-routine": (ecg("normal", 0.10), timedelta(hours=3, minutes=45)),  # due in 15 min → stat band
        "fresh-urgent": (ecg("af", 0.70), timedelta(0)),  # due in exactly 2 h → urgent band
        "urgent-a": (ecg("other", 0.75), timedelta(minutes=10)),
        "urgent-b": (ecg("other", 0.75), timedelta(minutes=20)),  # same score, waited longer → first
        "stat": (ecg("af", 0.93), timedelta(minutes=5)),
        "routine": (ecg("normal", 0.05), timedelta(minutes=1)),
    }
    ids = {}
    for name, (spec, ago) in made.items():
        ids[screen_study(sessions, blobs, spec, received_at=now - ago)] = name
    screen_study(sessions, blobs, breast_us("malignant", 0.99))  # another worklist: never listed
    assert triage(sessions) == 7
    with sessions() as s:
        listed = list_worklist(s, "cardiology", TARGETS, now=now)
    assert [ids[row["study_id"]] for row in listed] == [
        "stat",
        "old-routine",
        "urgent-b",
        "urgent-a",
        "fresh-urgent",
        "routine",
    ]
    assert [row["effective_priority"] for row in listed] == ["stat", "stat", "urgent", "urgent", "urgent", "routine"]
    assert [row["priority"] for row in listed] == ["stat", "routine", "urgent", "urgent", "urgent", "routine"]
    by_name = {ids[row["study_id"]]: row for row in listed}
    assert by_name["old-routine"]["seconds_to_due"] == 15 * 60
    assert by_name["fresh-urgent"]["seconds_to_due"] == 2 * 3600

    for limit in (1, 2, 3, 5):
        with sessions() as s:
            head = list_worklist(s, "cardiology", TARGETS, now=now, limit=limit)
        assert [row["id"] for row in head] == [row["id"] for row in listed[:limit]]

    # two hours later everything still open has aged one band or more; ties keep score order
    with sessions() as s:
        later = list_worklist(s, "cardiology", TARGETS, now=now + timedelta(hours=2))
    assert {row["effective_priority"] for row in later} == {"stat", "urgent"}
    assert ids[later[-1]["study_id"]] == "routine" and later[-1]["effective_priority"] == "urgent"


def test_closed_items_leave_the_worklist(sessions: Sessions, blobs: BlobStore, team: Team) -> None:
    done = screen_study(sessions, blobs, ecg("af", 0.95))
    waiting = screen_study(sessions, blobs, ecg("af", 0.90))
    triage(sessions)
    finalize(sessions, one_item(sessions, done).id, team.attending, team.assoc)
    with sessions() as s:
        listed = list_worklist(s, "cardiology", TARGETS)
    assert [row["study_id"] for row in listed] == [waiting]


# --------------------------------------------------------------------------- acting


def test_double_review_finalizes_with_two_signatures(sessions: Sessions, af_item: str, team: Team) -> None:
    text = "Atrial fibrillation with rapid ventricular response, rate 130/min."
    assert act(sessions, af_item, "claim", team.attending, lease=LEASE) == "claimed"
    assert act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText("first go", None)) == "draft"
    assert act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText(text, True, "af")) == "draft"
    assert act(sessions, af_item, "sign", team.attending, lease=LEASE) == "awaiting_review"
    item = reload(sessions, af_item)
    assert (item.state, item.open, item.claimed_by, item.first_reader_id) == (
        "awaiting_review",
        True,
        None,
        team.attending.id,
    )
    signing = utcnow()
    assert act(sessions, af_item, "sign", team.assoc, lease=LEASE) == "final"
    signed = utcnow()

    item = reload(sessions, af_item)
    assert (item.state, item.open, item.ai_agrees) == ("final", False, True)
    assert item.finalized_at is not None
    assert signing <= as_utc(item.finalized_at) <= signed  # finalized by that co-signature
    (report,) = reports_of(sessions, af_item)
    assert (report.version, report.status, report.text, report.ai_agrees, report.author_id) == (
        1,
        "final",
        text,
        True,
        team.attending.id,
    )
    signatures = signatures_of(sessions, report.id)
    assert [(s.kind, s.user_id) for s in signatures] == [("submitted", team.attending.id), ("cosigned", team.assoc.id)]
    assert len({s.user_id for s in signatures}) == 2
    for signature in signatures:
        assert signature.text == text
        assert signature.text_sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_returned_report_is_redrafted_and_resubmitted(sessions: Sessions, af_item: str, team: Team) -> None:
    original, revised = "AF.", "AF with RVR; QTc 470 ms."
    act(sessions, af_item, "claim", team.attending, lease=LEASE)
    act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText(original, True, "af"))
    act(sessions, af_item, "sign", team.attending, lease=LEASE)
    comment = "Please comment on the QT interval."
    assert act(sessions, af_item, "return", team.assoc, lease=LEASE, comment=comment) == "returned"
    item = reload(sessions, af_item)
    assert (item.state, item.return_comment, item.open, item.claimed_by) == ("returned", comment, True, None)
    assert [r.status for r in reports_of(sessions, af_item)] == ["draft"]

    with pytest.raises(ConflictError, match="revised draft"):
        act(sessions, af_item, "sign", team.attending, lease=LEASE)
    with pytest.raises(ForbiddenError, match="belongs to its first reader"):
        act(sessions, af_item, "claim", team.attending2, lease=LEASE)
    assert act(sessions, af_item, "claim", team.attending, lease=LEASE) == "returned"
    assert act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText(revised, True, "af")) == "draft"
    assert act(sessions, af_item, "sign", team.attending, lease=LEASE) == "awaiting_review"
    assert act(sessions, af_item, "sign", team.assoc, lease=LEASE) == "final"

    item = reload(sessions, af_item)
    assert (item.state, item.open, item.return_comment) == ("final", False, None)
    (report,) = reports_of(sessions, af_item)
    assert (report.status, report.text) == ("final", revised)
    signed = [(s.kind, s.user_id, s.text, s.text_sha256) for s in signatures_of(sessions, report.id)]
    digest = {t: hashlib.sha256(t.encode()).hexdigest() for t in (original, revised)}
    assert signed == [
        ("submitted", team.attending.id, original, digest[original]),
        ("submitted", team.attending.id, revised, digest[revised]),
        ("cosigned", team.assoc.id, revised, digest[revised]),
    ]


def test_amending_a_final_report_starts_a_new_version(sessions: Sessions, af_item: str, team: Team) -> None:
    finalize(sessions, af_item, team.attending, team.assoc, text="AF.")
    with pytest.raises(ConflictError, match="amend"):
        act(sessions, af_item, "claim", team.attending2, lease=LEASE)
    with pytest.raises(ForbiddenError, match="amend"):
        act(sessions, af_item, "amend", team.attending2, lease=LEASE)  # neither first reader nor assoc. chief
    assert act(sessions, af_item, "amend", team.attending, lease=LEASE) == "draft"

    item = reload(sessions, af_item)
    assert (item.state, item.open, item.finalized_at, item.first_reader_id, item.claimed_by) == (
        "draft",
        True,
        None,
        team.attending.id,
        team.attending.id,
    )
    old, new = reports_of(sessions, af_item)
    assert (old.version, old.status, old.text) == (1, "superseded", "AF.")
    assert (new.version, new.status, new.text) == (2, "draft", "AF.")
    assert len(signatures_of(sessions, old.id)) == 2
    with sessions() as s:
        assert [row["id"] for row in list_worklist(s, "cardiology", TARGETS)] == [af_item]

    act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText("AF. Addendum: LVH.", False, "other"))
    act(sessions, af_item, "sign", team.attending, lease=LEASE)
    assert act(sessions, af_item, "sign", team.assoc, lease=LEASE) == "final"
    old, new = reports_of(sessions, af_item)
    assert (old.status, old.text, new.status, new.text) == ("superseded", "AF.", "final", "AF. Addendum: LVH.")
    item = reload(sessions, af_item)
    assert (item.open, item.ai_agrees) == (False, False) and item.finalized_at is not None
    assert [s.text for s in signatures_of(sessions, new.id)] == ["AF. Addendum: LVH."] * 2


def test_a_report_over_max_chars_is_refused_and_changes_nothing(sessions: Sessions, af_item: str, team: Team) -> None:
    act(sessions, af_item, "claim", team.attending, lease=LEASE)
    with pytest.raises(StudyTooLargeError, match="100"):
        act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText("x" * 101, True), max_chars=100)
    assert reload(sessions, af_item).state == "claimed"
    assert reports_of(sessions, af_item) == []
    assert act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText("x" * 100, True), max_chars=100)


def test_readers_outside_the_specialty_and_residents_are_refused(sessions: Sessions, af_item: str, team: Team) -> None:
    with pytest.raises(ForbiddenError, match="specialties"):
        act(sessions, af_item, "claim", team.sono, lease=LEASE)
    with sessions() as s, pytest.raises(ForbiddenError, match="specialties"):
        item_detail(s, af_item, team.sono, TARGETS)
    with pytest.raises(ForbiddenError, match="resident"):
        act(sessions, af_item, "claim", team.resident, lease=LEASE)
    item = reload(sessions, af_item)
    assert (item.state, item.claimed_by, item.first_reader_id) == ("unread", None, None)
    assert count(sessions, ItemEvent) == 0

    finalize_upto_review(sessions, af_item, team.attending)
    with pytest.raises(ForbiddenError, match="first reader may not co-sign"):
        act(sessions, af_item, "sign", team.attending, lease=LEASE)
    with pytest.raises(ForbiddenError, match="second reader must be associate_chief"):
        act(sessions, af_item, "sign", team.attending2, lease=LEASE)
    with pytest.raises(ForbiddenError, match="resident"):
        act(sessions, af_item, "sign", team.resident, lease=LEASE)
    assert reload(sessions, af_item).state == "awaiting_review"


def finalize_upto_review(sessions: Sessions, item_id: str, first: Principal) -> None:
    act(sessions, item_id, "claim", first, lease=LEASE)
    act(sessions, item_id, "draft", first, lease=LEASE, draft=DraftText("AF.", True, "af"))
    act(sessions, item_id, "sign", first, lease=LEASE)


def test_a_held_claim_refuses_others_and_an_expired_one_lets_them_in(
    sessions: Sessions, af_item: str, team: Team
) -> None:
    act(sessions, af_item, "claim", team.attending, lease=LEASE)
    with pytest.raises(ConflictError, match="claimed by"):
        act(sessions, af_item, "claim", team.attending2, lease=LEASE)
    assert reload(sessions, af_item).claimed_by == team.attending.id

    set_item(sessions, af_item, claim_expires=utcnow() - timedelta(seconds=1))  # the lease ran out
    assert act(sessions, af_item, "claim", team.attending2, lease=LEASE) == "claimed"
    item = reload(sessions, af_item)
    assert (item.claimed_by, item.first_reader_id) == (team.attending2.id, team.attending2.id)

    act(sessions, af_item, "release", team.attending2, lease=LEASE)
    assert act(sessions, af_item, "claim", team.attending, lease=timedelta(milliseconds=1)) == "claimed"
    time.sleep(0.05)
    assert act(sessions, af_item, "claim", team.attending2, lease=LEASE) == "claimed"
    assert reload(sessions, af_item).claimed_by == team.attending2.id

    with pytest.raises(ValueError, match="positive"):  # a zero lease is refused by the state machine
        act(sessions, af_item, "claim", team.attending2, lease=timedelta(0))


# --------------------------------------------------------------------------- concurrent claims


def test_of_eight_concurrent_claims_exactly_one_wins(sessions: Sessions, af_item: str) -> None:
    n = 8
    people = [reader(sessions, f"reader{i}", "attending") for i in range(n)]
    start = threading.Barrier(n)
    outcomes: dict[str, str] = {}
    lock = threading.Lock()

    def claim(user: Principal) -> None:
        try:
            start.wait(timeout=30)
            got = act(sessions, af_item, "claim", user, lease=LEASE)
        except ConflictError:
            got = "conflict"
        except BaseException as exc:  # reported below
            got = f"error {type(exc).__name__}: {exc}"
        with lock:
            outcomes[user.id] = got

    threads = [threading.Thread(target=claim, args=(user,)) for user in people]
    for one in threads:
        one.start()
    for one in threads:
        one.join(timeout=60)
    assert sorted(outcomes.values()) == ["claimed"] + ["conflict"] * (n - 1), outcomes
    winner = next(uid for uid, got in outcomes.items() if got == "claimed")
    item = reload(sessions, af_item)
    assert (item.claimed_by, item.first_reader_id, item.state) == (winner, winner, "claimed")
    assert count(sessions, ItemEvent, ItemEvent.item_id == af_item) == 1


def _claim_in_process(url: str, item_id: str, user: Principal, start: Any, out: Any) -> None:
    """Child process (a second service on the same database): its own engine, one claim."""
    engine = make_engine(url)
    try:
        sessions = session_factory(engine)
        start.wait(60)
        try:
            out.put((user.id, act(sessions, item_id, "claim", user, lease=LEASE)))
        except ConflictError:
            out.put((user.id, "conflict"))
        except BaseException as exc:
            out.put((user.id, f"error {type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()


def test_of_concurrent_claims_from_several_processes_exactly_one_wins(
    sessions: Sessions, database_url: str, af_item: str
) -> None:
    processes = 4 if database_url.startswith("postgresql") else 2  # service processes on one database
    people = [reader(sessions, f"proc{i}", "attending") for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(processes), context.Queue()
    children = [
        context.Process(target=_claim_in_process, args=(database_url, af_item, user, start, out)) for user in people
    ]
    for child in children:
        child.start()
    try:
        outcomes = dict(out.get(timeout=90) for _ in children)
    finally:
        for child in children:
            child.join(timeout=30)
    assert [child.exitcode for child in children] == [0] * processes
    assert sorted(outcomes.values()) == ["claimed"] + ["conflict"] * (processes - 1), outcomes
    winner = next(uid for uid, got in outcomes.items() if got == "claimed")
    assert reload(sessions, af_item).claimed_by == winner
    assert count(sessions, ItemEvent, ItemEvent.item_id == af_item) == 1


# --------------------------------------------------------------------------- SLA escalation


def test_escalation_at_75_and_100_percent_once_each_never_when_final(
    sessions: Sessions, blobs: BlobStore, team: Team
) -> None:
    received = utcnow().replace(microsecond=0) - timedelta(days=1)
    # urgent: 2 h target → 75 % after 90 min
    urgent = screen_study(sessions, blobs, ecg("other", 0.7), received_at=received)
    closed = screen_study(sessions, blobs, ecg("af", 0.7), received_at=received)
    triage(sessions)
    urgent_id, closed_id = one_item(sessions, urgent).id, one_item(sessions, closed).id
    assert reload(sessions, urgent_id).priority == reload(sessions, closed_id).priority == "urgent"
    finalize(sessions, closed_id, team.attending, team.assoc)

    assert escalate(sessions, TARGETS, now=received + timedelta(minutes=2 * 60 * 0.74)) == []
    assert reload(sessions, urgent_id).escalation == 0

    at_75 = received + timedelta(minutes=90)
    assert escalate(sessions, TARGETS, now=at_75) == [
        {"item_id": urgent_id, "worklist": "cardiology", "level": 75, "priority": "urgent"}
    ]
    assert reload(sessions, urgent_id).escalation == 75
    assert escalate(sessions, TARGETS, now=at_75) == []
    assert escalate(sessions, TARGETS, now=at_75 + timedelta(minutes=29)) == []

    at_100 = received + timedelta(hours=2)
    assert [(e["item_id"], e["level"]) for e in escalate(sessions, TARGETS, now=at_100)] == [(urgent_id, 100)]
    assert reload(sessions, urgent_id).escalation == 100
    assert escalate(sessions, TARGETS, now=at_100 + timedelta(days=3)) == []

    with sessions() as s:
        rows = s.execute(select(Escalation.item_id, Escalation.level, Escalation.at).order_by(Escalation.level)).all()
    assert [(i, lvl, as_utc(at)) for i, lvl, at in rows] == [(urgent_id, 75, at_75), (urgent_id, 100, at_100)]
    assert reload(sessions, closed_id).escalation == 0


def test_an_item_first_seen_past_due_is_escalated_to_100_directly(sessions: Sessions, blobs: BlobStore) -> None:
    received = utcnow().replace(microsecond=0) - timedelta(hours=1)
    study_id = screen_study(sessions, blobs, ecg("af", 0.95), received_at=received)  # stat: 30 min target
    triage(sessions)
    item_id = one_item(sessions, study_id).id
    assert [(e["item_id"], e["level"]) for e in escalate(sessions, TARGETS, now=utcnow())] == [(item_id, 100)]
    assert escalate(sessions, TARGETS, now=utcnow()) == []
    assert count(sessions, Escalation) == 1


def _pausing(targets: SlaTargets, at_call: int, pause: threading.Event, resume: threading.Event) -> SlaTargets:
    """Targets whose ``at_call``-th ``target()`` call (inside escalate's transaction) waits for ``resume``."""
    calls: list[str] = []

    class Pausing(SlaTargets):
        def target(self, p: Priority) -> timedelta:
            calls.append(p)
            if len(calls) == at_call:
                pause.set()
                assert resume.wait(30)
            return super().target(p)

    return Pausing(targets.stat, targets.urgent, targets.routine)


def test_two_escalation_runs_at_once_record_each_level_once_without_failing(
    sessions: Sessions, blobs: BlobStore
) -> None:
    received = utcnow().replace(microsecond=0) - timedelta(hours=3)
    study_id = screen_study(sessions, blobs, ecg("other", 0.7), received_at=received)  # urgent, past due
    triage(sessions)
    item_id = one_item(sessions, study_id).id
    now = utcnow()
    # the first run pauses before its last query: its level-100 escalation is written, not committed
    paused, resume = threading.Event(), threading.Event()
    slow = _pausing(TARGETS, 6, paused, resume)
    results: dict[str, Any] = {}

    def run(name: str, targets: SlaTargets) -> None:
        try:
            results[name] = escalate(sessions, targets, now=now)
        except Exception as exc:
            results[name] = exc

    first = threading.Thread(target=run, args=("first", slow))
    first.start()
    assert paused.wait(30)
    second = threading.Thread(target=run, args=("second", TARGETS))
    second.start()
    second.join(timeout=1.0)  # on PostgreSQL it now waits for the first run's row lock
    resume.set()
    first.join(timeout=30)
    second.join(timeout=30)
    failures = {name: repr(got) for name, got in results.items() if isinstance(got, Exception)}
    assert failures == {}
    events = [(e["item_id"], e["level"]) for name in ("first", "second") for e in results[name]]
    assert events == [(item_id, 100)]
    assert count(sessions, Escalation) == 1


def test_two_triage_runs_at_once_make_one_item_per_study_and_worklist(sessions: Sessions, blobs: BlobStore) -> None:
    studies = [screen_study(sessions, blobs, ecg("af", 0.5 + i / 20)) for i in range(6)]
    studies.append(screen_study(sessions, blobs, chest_xray("effusion", 0.9, True), UNSCREENABLE_CT))
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=30)
            triage(sessions)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for one in threads:
        one.start()
    for one in threads:
        one.join(timeout=60)
    assert errors == []
    assert triage(sessions) == 0
    made = sorted((i.study_id, i.worklist) for i in items_of(sessions))
    assert len(made) == len(set(made)) == 8
    assert {study_id for study_id, _ in made} == set(studies)


def test_a_non_utc_now_gives_the_same_worklist_and_escalations(sessions: Sessions, blobs: BlobStore) -> None:
    now = utcnow().replace(microsecond=0)
    urgent = screen_study(sessions, blobs, ecg("other", 0.7), received_at=now - timedelta(minutes=80))
    screen_study(sessions, blobs, ecg("normal", 0.1), received_at=now)
    triage(sessions)
    local = now.astimezone(timezone(timedelta(hours=-5)))  # the same instant, in UTC-5
    with sessions() as s:
        in_utc = list_worklist(s, "cardiology", TARGETS, now=now)
        in_local = list_worklist(s, "cardiology", TARGETS, now=local)
    assert [(r["id"], r["effective_priority"]) for r in in_local] == [
        (r["id"], r["effective_priority"]) for r in in_utc
    ]
    assert escalate(sessions, TARGETS, now=local) == []  # 80 of 120 minutes: under 75 %
    assert reload(sessions, one_item(sessions, urgent).id).escalation == 0


# --------------------------------------------------------------------------- turnaround


def test_turnaround_percentiles_and_share_within_target(sessions: Sessions, blobs: BlobStore, team: Team) -> None:
    base = utcnow().replace(microsecond=0) - timedelta(days=2)
    waits = {  # (worklist, priority): minutes from receipt to final
        ("cardiology", "stat"): [12.5, 20.0, 29.75, 31.0, 58.0, 7.25],
        ("sonography", "urgent"): [45.0, 119.5, 121.0],
    }
    specs = {("cardiology", "stat"): ecg("af", 0.95), ("sonography", "urgent"): breast_us("malignant", 0.8)}
    made: list[tuple[str, float]] = []
    for key, minutes in waits.items():
        for m in minutes:
            made.append((screen_study(sessions, blobs, specs[key]), m))
    still_open = screen_study(sessions, blobs, ecg("af", 0.95))
    triage(sessions)
    for i, (study_id, waited) in enumerate(made):
        item_id = one_item(sessions, study_id).id
        if i == 0:
            finalize(sessions, item_id, team.attending, team.assoc)  # one the real way, then on a known clock
        received = base + timedelta(hours=i)
        set_item(
            sessions,
            item_id,
            open=False,
            state="final",
            received_at=received,
            finalized_at=received + timedelta(minutes=waited),
        )
    assert one_item(sessions, still_open).open

    with sessions() as s:
        stats = turnaround_stats(s, TARGETS)
    assert [(g["worklist"], g["priority"]) for g in stats] == sorted(waits)
    for group in stats:
        minutes = waits[(group["worklist"], group["priority"])]
        target = TARGETS.target(group["priority"]).total_seconds() / 60
        assert group["n"] == len(minutes)
        assert group["p50_minutes"] == pytest.approx(round(float(np.percentile(minutes, 50)), 1))
        assert group["p95_minutes"] == pytest.approx(round(float(np.percentile(minutes, 95)), 1))
        assert group["within_target"] == pytest.approx(round(sum(m <= target for m in minutes) / len(minutes), 3))
        assert group["target_minutes"] == target
    cardiology = stats[0]
    assert (cardiology["p50_minutes"], cardiology["within_target"]) == (pytest.approx(24.9), pytest.approx(0.667))


# --------------------------------------------------------------------------- item detail


def test_item_detail_has_reports_signatures_history_and_allowed_actions(
    sessions: Sessions, af_item: str, team: Team
) -> None:
    def detail(user: Principal) -> dict[str, Any]:
        with sessions() as s:
            return item_detail(s, af_item, user, TARGETS)

    assert detail(team.attending)["allowed_actions"] == ["claim"]
    assert detail(team.resident)["allowed_actions"] == []
    finalize_upto_review(sessions, af_item, team.attending)
    assert detail(team.attending)["allowed_actions"] == []
    assert detail(team.assoc)["allowed_actions"] == ["claim", "sign", "return"]
    assert detail(team.attending2)["allowed_actions"] == []
    act(sessions, af_item, "sign", team.assoc, lease=LEASE)

    shown = detail(team.attending)
    assert (shown["id"], shown["state"], shown["worklist"], shown["priority"]) == (
        af_item,
        "final",
        "cardiology",
        "stat",
    )
    assert (shown["first_reader"], shown["first_reader_id"], shown["ai_agrees"]) == (
        "Ann Attending",
        team.attending.id,
        True,
    )
    assert shown["finalized_at"] is not None and shown["claimed_by"] is None
    (report,) = shown["reports"]
    assert (report["version"], report["status"], report["text"], report["author"]) == (
        1,
        "final",
        "AF.",
        "Ann Attending",
    )
    digest = hashlib.sha256(b"AF.").hexdigest()
    assert [(s["kind"], s["by"], s["user_id"], s["text_sha256"]) for s in report["signatures"]] == [
        ("submitted", "Ann Attending", team.attending.id, digest),
        ("cosigned", "Cy Assoc", team.assoc.id, digest),
    ]
    assert [(h["action"], h["state"], h["by"]) for h in shown["history"]] == [
        ("claim", "claimed", "Ann Attending"),
        ("draft", "draft", "Ann Attending"),
        ("sign", "awaiting_review", "Ann Attending"),
        ("sign", "final", "Cy Assoc"),
    ]
    times = [h["at"] for h in shown["history"]]
    assert times == sorted(times)
    assert shown["allowed_actions"] == ["amend"]
    assert detail(team.assoc)["allowed_actions"] == ["amend"]
    assert detail(team.attending2)["allowed_actions"] == []


def test_agreeing_with_the_ai_without_a_label_records_the_ai_label(
    sessions: Sessions, af_item: str, team: Team
) -> None:
    assert act(sessions, af_item, "claim", team.attending, lease=LEASE) == "claimed"
    act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText("AF.", False))
    with pytest.raises(ConflictError, match="record your own label"):  # disagreeing: say what it is
        act(sessions, af_item, "sign", team.attending, lease=LEASE)
    act(sessions, af_item, "draft", team.attending, lease=LEASE, draft=DraftText("AF. Agree with AI.", True))
    assert act(sessions, af_item, "sign", team.attending, lease=LEASE) == "awaiting_review"
    (report,) = reports_of(sessions, af_item)
    assert report.physician_label == reload(sessions, af_item).label == "af"
