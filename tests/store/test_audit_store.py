"""The audit trail in the database (``prescreen.store.audit``), on SQLite and PostgreSQL
(``sessions``): appending chains records 1..n, signed checkpoints, tampering done directly in SQL is
caught by ``verify``, the auditor's search, and concurrent writers serialised by the head row."""

from __future__ import annotations

import base64
import itertools
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.security.audit import (
    GENESIS,
    Actor,
    ActorKind,
    AuditEntry,
    AuditEvent,
    AuditRecord,
    Checkpoint,
    Outcome,
    chain_hash,
    verify_chain,
)
from prescreen.security.sm import Sm2Signer
from prescreen.store import audit
from prescreen.store.audit import AuditQuery
from prescreen.store.schema import Study
from prescreen.store.schema_security import AuditCheckpoint, AuditHead
from prescreen.store.schema_security import AuditEvent as AuditRow

Sessions = sessionmaker[Session]
STUDY_A = "1.2.826.0.1.3680043.8.498.1"
STUDY_B = "1.2.826.0.1.3680043.8.498.2"


@pytest.fixture(scope="module")
def signer() -> Sm2Signer:
    return Sm2Signer.generate()


def entry(i: int) -> AuditEntry:
    """A varied entry: actor, event, study and outcome depend on ``i``."""
    return AuditEntry(
        event=[AuditEvent.SIGN_IN, AuditEvent.STUDY_READ, AuditEvent.REPORT_SIGN][i % 3],
        actor=Actor(ActorKind.USER, ["dr.wang", "dr.li"][i % 2], "10.0.0.1"),
        outcome=Outcome.SUCCESS if i % 5 else Outcome.MINOR_FAILURE,
        study_uid=[None, STUDY_A, STUDY_B][i % 3],
        object_id=f"item-{i}",
        detail={"i": i, "note": "报告"},
    )


def fill(sessions: Sessions, n: int) -> list[AuditRecord]:
    return [audit.record_now(sessions, entry(i)) for i in range(1, n + 1)]


def stored(sessions: Sessions) -> list[AuditRecord]:
    with sessions() as session:
        return list(audit.iter_records(session))


def test_record_appends_with_seq_1_to_n_and_links_hashes(sessions: Sessions) -> None:
    made = fill(sessions, 12)
    assert [r.seq for r in made] == list(range(1, 13))
    assert made[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(made))
    assert all(chain_hash(r) == r.hash for r in made)
    assert stored(sessions) == made  # stored exactly as hashed, read back field for field
    with sessions() as session:
        assert audit.head_seq(session) == 12
        head = session.get(AuditHead, 1)
        assert head is not None
        assert (head.seq, head.hash) == (12, made[-1].hash)
        assert audit.records_after(session, 10, 100) == made[10:]
        assert audit.records_after(session, 0, 3) == made[:3]
    assert verify_chain(made).ok


def test_record_joins_the_callers_transaction(sessions: Sessions) -> None:
    fill(sessions, 2)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        audit.record(session, entry(3))
        raise RuntimeError("the action failed")
    with sessions.begin() as session:
        again = audit.record(session, entry(3))
    assert again.seq == 3  # the rolled-back record left no gap
    assert [r.seq for r in stored(sessions)] == [1, 2, 3]


def test_an_empty_trail(sessions: Sessions, signer: Sm2Signer) -> None:
    with sessions() as session:
        assert audit.head_seq(session) == 0
        assert audit.search(session, AuditQuery()) == ([], 0)
    assert audit.sign_checkpoint(sessions, signer) is None
    verdict = audit.verify(sessions, signer.public_pem())
    assert (verdict.ok, verdict.records, verdict.checkpoints) == (True, 0, 0)


def test_verify_with_signed_checkpoints(sessions: Sessions, signer: Sm2Signer) -> None:
    fill(sessions, 5)
    first = audit.sign_checkpoint(sessions, signer)
    assert first is not None
    assert (first.seq, first.key_id) == (5, signer.key_id())
    assert first.hash == stored(sessions)[-1].hash
    assert audit.checkpoint_signature_ok(signer.public_pem(), first)
    assert audit.sign_checkpoint(sessions, signer) is None  # nothing new since
    fill(sessions, 3)
    second = audit.sign_checkpoint(sessions, signer)
    assert second is not None
    assert second.seq == 8
    with sessions() as session:
        assert audit.checkpoints(session) == [first, second]
    verdict = audit.verify(sessions, signer.public_pem())
    assert verdict.ok, verdict.reason
    assert (verdict.records, verdict.checkpoints) == (8, 2)


def test_verify_refuses_checkpoints_under_another_key(sessions: Sessions, signer: Sm2Signer) -> None:
    fill(sessions, 3)
    audit.sign_checkpoint(sessions, signer)
    verdict = audit.verify(sessions, Sm2Signer.generate().public_pem())
    assert (verdict.ok, verdict.broken_seq) == (False, 3)
    assert "signature" in verdict.reason


def _signed(sessions: Sessions, signer: Sm2Signer, n: int = 10) -> None:
    fill(sessions, n)
    assert audit.sign_checkpoint(sessions, signer) is not None
    assert audit.verify(sessions, signer.public_pem()).ok


def _restore(sessions: Sessions, records: list[AuditRecord], marks: list[Checkpoint]) -> None:
    """Put the trail back as it was (so that one database serves several tamperings)."""
    with sessions.begin() as session:
        session.execute(delete(AuditRow))
        session.execute(delete(AuditCheckpoint))
        session.add_all(AuditRow(**r.__dict__) for r in records)
        session.add_all(AuditCheckpoint(**c.__dict__) for c in marks)


UPDATES: list[tuple[str, object]] = [
    ("actor", "mallory"),
    ("outcome", 8),
    ("at", "2020-01-01T00:00:00.000000Z"),
    ("detail", "{}"),
    ("study_uid", STUDY_B),
    ("event", "export"),
    ("event_id", "110101"),
    ("address", None),
    ("object_id", "item-99"),
    ("prev_hash", "f" * 64),
    ("hash", "e" * 64),
]


def test_an_updated_column_is_detected(sessions: Sessions, signer: Sm2Signer) -> None:
    _signed(sessions, signer)
    records = stored(sessions)
    with sessions() as session:
        marks = audit.checkpoints(session)
    for seq in (1, 4, 10):
        for column, value in UPDATES:
            with sessions.begin() as session:
                session.execute(update(AuditRow).where(AuditRow.seq == seq).values({column: value}))
            verdict = audit.verify(sessions, signer.public_pem())
            assert not verdict.ok, (seq, column)
            assert verdict.broken_seq == seq, (seq, column, verdict.reason)
            _restore(sessions, records, marks)
            assert audit.verify(sessions, signer.public_pem()).ok, (seq, column)


def test_an_update_in_raw_sql_is_detected(sessions: Sessions, signer: Sm2Signer) -> None:
    _signed(sessions, signer)
    with sessions.begin() as session:
        session.execute(text("UPDATE audit_events SET actor = 'nobody' WHERE seq = 7"))
    verdict = audit.verify(sessions, signer.public_pem())
    assert (verdict.ok, verdict.broken_seq) == (False, 7)


def test_a_deleted_row_is_detected(sessions: Sessions, signer: Sm2Signer) -> None:
    _signed(sessions, signer)
    records = stored(sessions)
    with sessions() as session:
        marks = audit.checkpoints(session)
    for seq in (1, 5, 9, 10):
        with sessions.begin() as session:
            session.execute(delete(AuditRow).where(AuditRow.seq == seq))
        verdict = audit.verify(sessions, signer.public_pem())
        assert (verdict.ok, verdict.broken_seq) == (False, seq), verdict.reason  # the last: by the checkpoint
        _restore(sessions, records, marks)
    with sessions.begin() as session:  # several rows at once: the first gap is named
        session.execute(delete(AuditRow).where(AuditRow.seq.in_([3, 4, 8])))
    verdict = audit.verify(sessions, signer.public_pem())
    assert (verdict.ok, verdict.broken_seq) == (False, 3)


def test_a_rewritten_tail_is_caught_by_the_checkpoint(sessions: Sessions, signer: Sm2Signer) -> None:
    _signed(sessions, signer)
    records = stored(sessions)
    # an attacker changes record 6 and recomputes every hash after it, the head too
    prev = records[4].hash
    with sessions.begin() as session:
        for r in records[5:]:
            forged = AuditRecord(**{**r.__dict__, "actor": "mallory" if r.seq == 6 else r.actor, "prev_hash": prev})
            forged = AuditRecord(**{**forged.__dict__, "hash": chain_hash(forged)})
            session.execute(
                update(AuditRow)
                .where(AuditRow.seq == r.seq)
                .values(actor=forged.actor, prev_hash=forged.prev_hash, hash=forged.hash)
            )
            prev = forged.hash
        session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
    assert verify_chain(stored(sessions)).ok  # the records alone are consistent
    verdict = audit.verify(sessions, signer.public_pem())
    assert (verdict.ok, verdict.broken_seq) == (False, 10)
    assert "checkpoint" in verdict.reason


def test_a_checkpoint_kept_elsewhere_catches_a_deleted_checkpoint(sessions: Sessions, signer: Sm2Signer) -> None:
    fill(sessions, 4)
    kept = audit.sign_checkpoint(sessions, signer)
    assert kept is not None
    with sessions.begin() as session:
        session.execute(delete(AuditRow).where(AuditRow.seq == 4))
        session.execute(delete(AuditCheckpoint))
    assert audit.verify(sessions, signer.public_pem()).ok  # truncated, with its checkpoint gone
    verdict = audit.verify(sessions, signer.public_pem(), [kept])
    assert (verdict.ok, verdict.broken_seq) == (False, 4)


def test_an_updated_checkpoint_is_detected(sessions: Sessions, signer: Sm2Signer) -> None:
    _signed(sessions, signer)
    records = stored(sessions)
    with sessions() as session:
        marks = audit.checkpoints(session)
    tamperings: dict[str, dict[str, object]] = {
        "another-message": {"signature": base64.b64encode(signer.sign(b"something else")).decode()},
        "not-base64": {"signature": "not base64!"},
        "hash": {"hash": "0" * 64},
        "seq": {"seq": 9},
        "at": {"at": "2020-01-01T00:00:00.000000Z"},
    }
    for how, values in tamperings.items():
        with sessions.begin() as session:
            session.execute(update(AuditCheckpoint).where(AuditCheckpoint.seq == 10).values(values))
        verdict = audit.verify(sessions, signer.public_pem())
        assert not verdict.ok, how
        assert "signature" in verdict.reason, how
        _restore(sessions, records, marks)
        assert audit.verify(sessions, signer.public_pem()).ok, how


def test_a_checkpoint_signature_of_garbage_is_detected(sessions: Sessions, signer: Sm2Signer) -> None:
    _signed(sessions, signer)
    with sessions.begin() as session:
        session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.seq == 10)
            .values(signature=base64.b64encode(b"garbage").decode())
        )
    verdict = audit.verify(sessions, signer.public_pem())
    assert (verdict.ok, verdict.broken_seq) == (False, 10)


def test_a_forged_extra_checkpoint_is_refused(sessions: Sessions, signer: Sm2Signer) -> None:
    fill(sessions, 3)
    head = stored(sessions)[-1]
    mallory = Sm2Signer.generate()
    unsigned = Checkpoint(3, head.hash, "2024-01-01T00:00:00.000000Z", mallory.key_id(), "")
    forged = Checkpoint(*[*unsigned.__dict__.values()][:4], base64.b64encode(mallory.sign(unsigned.message())).decode())
    verdict = audit.verify(sessions, signer.public_pem(), [forged])
    assert (verdict.ok, verdict.broken_seq) == (False, 3)


# --- search ------------------------------------------------------------------------------------------


def _parse(at: str) -> datetime:
    return datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def test_search_filters_and_returns_newest_first_with_the_total(sessions: Sessions) -> None:
    made = fill(sessions, 30)
    with sessions() as session:
        everything, total = audit.search(session, AuditQuery())
        assert total == 30
        assert [r.seq for r in everything] == list(range(30, 0, -1))

        by_actor, total = audit.search(session, AuditQuery(actor="dr.li"))
        expected = [r.seq for r in reversed(made) if r.actor == "dr.li"]
        assert [r.seq for r in by_actor] == expected
        assert total == len(expected) == 15

        by_event, total = audit.search(session, AuditQuery(event="study-read"))
        assert [r.seq for r in by_event] == [r.seq for r in reversed(made) if r.event == "study-read"]
        assert total == 10

        by_study, total = audit.search(session, AuditQuery(study_uid=STUDY_B))
        assert [r.seq for r in by_study] == [r.seq for r in reversed(made) if r.study_uid == STUDY_B]
        assert total == 10

        both, total = audit.search(session, AuditQuery(actor="dr.wang", event="report-sign", study_uid=STUDY_B))
        expected = [
            r.seq
            for r in reversed(made)
            if r.actor == "dr.wang" and r.event == "report-sign" and r.study_uid == STUDY_B
        ]
        assert [r.seq for r in both] == expected
        assert total == len(expected) == 5

        assert audit.search(session, AuditQuery(actor="nobody")) == ([], 0)


def test_search_pages_keep_the_total(sessions: Sessions) -> None:
    fill(sessions, 30)
    with sessions() as session:
        page, total = audit.search(session, AuditQuery(limit=7, offset=0))
        assert ([r.seq for r in page], total) == (list(range(30, 23, -1)), 30)
        page, total = audit.search(session, AuditQuery(limit=7, offset=28))
        assert ([r.seq for r in page], total) == ([2, 1], 30)
        page, total = audit.search(session, AuditQuery(actor="dr.li", limit=3, offset=3))
        assert ([r.seq for r in page], total) == ([23, 21, 19], 15)


def test_search_by_time_is_inclusive_and_timezone_aware(sessions: Sessions) -> None:
    made = fill(sessions, 12)
    since, until = _parse(made[3].at), _parse(made[8].at)
    expected = [r.seq for r in reversed(made) if made[3].at <= r.at <= made[8].at]
    assert {4, 9} <= set(expected)
    beijing = timezone(timedelta(hours=8))
    with sessions() as session:
        found, total = audit.search(session, AuditQuery(since=since, until=until))
        assert [r.seq for r in found] == expected
        assert total == len(expected)
        # the same instants written in another zone, and as naive UTC, find the same records
        shifted, _ = audit.search(session, AuditQuery(since=since.astimezone(beijing), until=until.astimezone(beijing)))
        assert [r.seq for r in shifted] == expected
        naive, _ = audit.search(session, AuditQuery(since=since.replace(tzinfo=None), until=until.replace(tzinfo=None)))
        assert [r.seq for r in naive] == expected
        later, total = audit.search(session, AuditQuery(since=_parse(made[-1].at) + timedelta(seconds=1)))
        assert (later, total) == ([], 0)
        earlier, total = audit.search(session, AuditQuery(until=since))
        assert [r.seq for r in earlier] == [r.seq for r in reversed(made) if r.at <= made[3].at]


def test_record_study_access_names_the_study_and_its_pseudonym(sessions: Sessions) -> None:
    with sessions.begin() as session:
        study = Study(study_uid=STUDY_A, patient_id="P00012345", patient_name="Rivera^Ana")
        session.add(study)
        session.flush()
        study_id = study.id
    with sessions.begin() as session:
        made = audit.record_study_access(
            session, AuditEvent.STUDY_READ, Actor(ActorKind.USER, "dr.wang"), study_id, detail={"page": 1}
        )
        missing = audit.record_study_access(session, AuditEvent.STUDY_READ, Actor(ActorKind.USER, "dr.wang"), None)
    assert made.study_uid == STUDY_A
    assert made.patient_hash is not None and len(made.patient_hash) == 64
    assert "P00012345" not in repr(made) and "Rivera" not in repr(made)
    assert (missing.study_uid, missing.patient_hash) == (None, None)
    with sessions() as session:
        found, total = audit.search(session, AuditQuery(patient_hash=made.patient_hash))
        assert ([r.seq for r in found], total) == ([1], 1)


# --- concurrency -------------------------------------------------------------------------------------


def test_concurrent_writers_make_one_contiguous_chain(sessions: Sessions, signer: Sm2Signer) -> None:
    threads_n, each = 4, 25
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(each):
                made = AuditEntry(AuditEvent.STUDY_READ, Actor(ActorKind.USER, f"t{t}"), detail={"i": i})
                audit.record_now(sessions, made)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    records = stored(sessions)
    assert [r.seq for r in records] == list(range(1, threads_n * each + 1))
    assert sorted(r.actor for r in records) == sorted(f"t{t}" for t in range(threads_n) for _ in range(each))
    with sessions() as session:
        assert audit.head_seq(session) == threads_n * each
        assert session.scalar(select(AuditHead.hash)) == records[-1].hash
    assert audit.sign_checkpoint(sessions, signer) is not None
    verdict = audit.verify(sessions, signer.public_pem())
    assert verdict.ok, verdict.reason
    assert verdict.records == threads_n * each
