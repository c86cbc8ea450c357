"""The audit trail's chain (``prescreen.security.audit``): a chain of records verifies, and every
one of 100 random tamperings (a changed field, a deleted, inserted or moved record, a tail rewritten
with recomputed hashes) is caught, the last by a checkpoint signed with a real SM2 key beforehand."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.security.audit import (
    CODES,
    GENESIS,
    Action,
    Actor,
    ActorKind,
    AuditEntry,
    AuditEvent,
    AuditRecord,
    Checkpoint,
    Outcome,
    canonical,
    canonical_detail,
    chain_hash,
    new_record,
    timestamp,
    verify_chain,
)
from prescreen.security.sm import Sm2Signer, sm3_hex, verify_sm2

N = 50
T0 = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC)
FIELDS = [f.name for f in dataclasses.fields(AuditRecord) if f.name != "hash"]


def _entry(i: int, rng: random.Random) -> AuditEntry:
    kind = rng.choice(list(ActorKind))
    return AuditEntry(
        event=rng.choice(list(AuditEvent)),
        actor=Actor(kind, f"{kind.value}-{i % 7}", rng.choice([None, "10.0.0.7", "PACS_AE"])),
        outcome=rng.choice(list(Outcome)),
        study_uid=rng.choice([None, f"1.2.826.0.1.3680043.8.498.{i}"]),
        patient_hash=rng.choice([None, sm3_hex(f"patient-{i % 5}".encode())]),
        object_id=rng.choice([None, f"item-{i}"]),
        detail=rng.choice([{}, {"reason": "bad password", "n": i}, {"z": [1, 2], "a": "报告"}]),
    )


def build_chain(n: int = N, seed: int = 7) -> list[AuditRecord]:
    rng = random.Random(seed)
    records: list[AuditRecord] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        record = new_record(seq, prev, _entry(seq, rng), at=T0 + timedelta(seconds=seq, microseconds=seq))
        records.append(record)
        prev = record.hash
    return records


def rehash(record: AuditRecord, **changes: object) -> AuditRecord:
    """``record`` with ``changes`` and its own hash recomputed (what a forger can do)."""
    changed = dataclasses.replace(record, **changes)
    return dataclasses.replace(changed, hash=chain_hash(changed))


def relink_from(records: list[AuditRecord], start: int) -> list[AuditRecord]:
    """Recompute every back link and hash from index ``start`` on (an attacker who recomputes)."""
    out = list(records[:start])
    for record in records[start:]:
        prev = out[-1].hash if out else GENESIS
        out.append(rehash(record, prev_hash=prev))
    return out


@pytest.fixture(scope="module")
def signer() -> Sm2Signer:
    return Sm2Signer.generate()


def sign(signer: Sm2Signer, record: AuditRecord) -> Checkpoint:
    unsigned = Checkpoint(record.seq, record.hash, timestamp(T0 + timedelta(hours=1)), signer.key_id(), "")
    signature = base64.b64encode(signer.sign(unsigned.message())).decode()
    return dataclasses.replace(unsigned, signature=signature)


def signature_check(signer: Sm2Signer) -> Callable[[Checkpoint], bool]:
    public = signer.public_pem()
    return lambda c: verify_sm2(public, c.message(), base64.b64decode(c.signature))


def test_a_chain_verifies(signer: Sm2Signer) -> None:
    records = build_chain()
    assert [r.seq for r in records] == list(range(1, N + 1))
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert len({r.hash for r in records}) == N
    marks = [sign(signer, records[19]), sign(signer, records[-1])]
    verdict = verify_chain(records, marks, signature_check(signer))
    assert verdict.ok, verdict.reason
    assert (verdict.records, verdict.checkpoints, verdict.broken_seq, verdict.reason) == (N, 2, None, "")


def test_an_empty_chain_verifies() -> None:
    verdict = verify_chain([])
    assert verdict.ok
    assert verdict.records == 0


def test_the_chain_is_deterministic() -> None:
    assert build_chain() == build_chain()
    assert build_chain()[-1].hash != build_chain(seed=8)[-1].hash


# --- 100 random tamperings ---------------------------------------------------------------------------

_CHANGES: dict[str, Callable[[AuditRecord], object]] = {
    "seq": lambda r: r.seq + 1000,
    "at": lambda r: timestamp(T0 - timedelta(days=1)),
    "event": lambda r: "sign-in" if r.event != "sign-in" else "sign-out",
    "event_id": lambda r: "110199",
    "event_type": lambda r: "110122" if r.event_type != "110122" else None,
    "action": lambda r: "D" if r.action != "D" else "C",
    "outcome": lambda r: 0 if r.outcome != 0 else 8,
    "actor_kind": lambda r: "user" if r.actor_kind != "user" else "system",
    "actor": lambda r: r.actor + "x",
    "address": lambda r: "192.0.2.1" if r.address != "192.0.2.1" else None,
    "study_uid": lambda r: (r.study_uid or "1.2.3") + ".9",
    "patient_hash": lambda r: sm3_hex(b"someone else") if r.patient_hash != sm3_hex(b"someone else") else None,
    "object_id": lambda r: (r.object_id or "item") + "-2",
    "detail": lambda r: json.dumps({"forged": True}) if r.detail != '{"forged":true}' else "{}",
    "prev_hash": lambda r: "f" * 64 if r.prev_hash != "f" * 64 else "e" * 64,
}
assert set(_CHANGES) == set(FIELDS)

KINDS = ["field", "delete", "insert", "swap", "rewrite-tail"]


def _tamper(records: list[AuditRecord], rng: random.Random, kind: str) -> tuple[list[AuditRecord], int | None, str]:
    """A tampered copy, the seq that must be named (when it is certain) and a description."""
    out = list(records)
    if kind == "field":
        i = rng.randrange(len(out))
        name = rng.choice(FIELDS)
        value = _CHANGES[name](out[i])
        assert value != getattr(out[i], name)
        out[i] = dataclasses.replace(out[i], **{name: value})
        return out, i + 1, f"field {name} of record {i + 1}"
    if kind == "delete":
        i = rng.randrange(len(out))
        del out[i]
        return out, i + 1, f"delete record {i + 1}"
    if kind == "insert":
        i = rng.randrange(len(out))  # before an existing record (an append at the end is not tampering)
        prev = out[i - 1].hash if i else GENESIS
        forged = new_record(i + 1, prev, AuditEntry(AuditEvent.EXPORT, Actor(ActorKind.USER, "mallory")), at=T0)
        out.insert(i, forged)
        return out, None, f"insert before record {i + 1}"
    if kind == "swap":
        i, j = sorted(rng.sample(range(len(out)), 2))
        out[i], out[j] = out[j], out[i]
        return out, i + 1, f"swap records {i + 1} and {j + 1}"
    i = rng.randrange(len(out))
    name = rng.choice([n for n in FIELDS if n not in ("seq", "prev_hash")])
    out[i] = dataclasses.replace(out[i], **{name: _CHANGES[name](out[i])})
    out = relink_from(out, i)
    return out, None, f"rewrite the tail from record {i + 1} ({name}) with recomputed hashes"


def test_100_random_tamperings_are_all_detected(signer: Sm2Signer) -> None:
    records = build_chain()
    marks = [sign(signer, records[9]), sign(signer, records[29]), sign(signer, records[-1])]
    check = signature_check(signer)
    assert verify_chain(records, marks, check).ok
    rng = random.Random(20240301)
    seen: dict[str, int] = dict.fromkeys(KINDS, 0)
    for _ in range(100):
        kind = rng.choice(KINDS)
        seen[kind] += 1
        tampered, named, what = _tamper(records, rng, kind)
        verdict = verify_chain(tampered, marks, check)
        assert not verdict.ok, f"not detected: {what}"
        assert verdict.reason, what
        if named is not None:
            assert verdict.broken_seq == named, f"{what}: named {verdict.broken_seq} ({verdict.reason})"
        if kind == "rewrite-tail":
            # the records alone are consistent again: only the signed checkpoints catch it
            assert verify_chain(tampered).ok, what
            assert "checkpoint" in verdict.reason
    assert all(count > 0 for count in seen.values()), seen


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("index", [0, 24, N - 1])
def test_every_field_change_names_its_record(name: str, index: int) -> None:
    records = build_chain()
    records[index] = dataclasses.replace(records[index], **{name: _CHANGES[name](records[index])})
    verdict = verify_chain(records)
    assert not verdict.ok
    assert verdict.broken_seq == index + 1
    assert str(index + 1) in verdict.reason


def test_a_changed_hash_is_detected() -> None:
    records = build_chain()
    records[10] = dataclasses.replace(records[10], hash="0" * 64)
    verdict = verify_chain(records)
    assert (verdict.ok, verdict.broken_seq) == (False, 11)


def test_a_truncated_tail_is_caught_only_by_a_checkpoint(signer: Sm2Signer) -> None:
    records = build_chain()
    marks = [sign(signer, records[-1])]
    assert verify_chain(records[:-5]).ok  # without a checkpoint a truncation looks like a shorter trail
    verdict = verify_chain(records[:-5], marks, signature_check(signer))
    assert (verdict.ok, verdict.broken_seq) == (False, N)
    assert "missing" in verdict.reason


def test_the_reasons_say_what_happened() -> None:
    records = build_chain()
    assert "missing" in verify_chain(records[:3] + records[4:]).reason
    relinked = list(records)
    relinked[5] = rehash(relinked[5], prev_hash="a" * 64)
    assert "does not link" in verify_chain(relinked).reason
    changed = list(records)
    changed[5] = dataclasses.replace(changed[5], actor="mallory")
    assert "changed after it was written" in verify_chain(changed).reason


def test_a_chain_not_starting_at_genesis_is_refused() -> None:
    records = build_chain()
    verdict = verify_chain(records[1:])
    assert (verdict.ok, verdict.broken_seq) == (False, 1)


def test_a_forged_checkpoint_is_refused(signer: Sm2Signer) -> None:
    records = build_chain()
    mallory = Sm2Signer.generate()
    forged_records = relink_from([*records[:20], rehash(records[20], actor="mallory"), *records[21:]], 20)
    forged = sign(mallory, forged_records[-1])  # signed with another key
    verdict = verify_chain(forged_records, [forged], signature_check(signer))
    assert (verdict.ok, verdict.broken_seq) == (False, N)
    assert "signature" in verdict.reason
    # a genuine checkpoint whose fields were edited no longer verifies either
    genuine = sign(signer, records[-1])
    moved = dataclasses.replace(genuine, hash=forged_records[-1].hash)
    assert not verify_chain(forged_records, [moved], signature_check(signer)).ok
    assert not verify_chain(records, [dataclasses.replace(genuine, at="2000-01-01T00:00:00.000000Z")],
                            signature_check(signer)).ok  # fmt: skip


def test_a_checkpoint_naming_a_missing_record_is_refused(signer: Sm2Signer) -> None:
    records = build_chain(5)
    beyond = dataclasses.replace(sign(signer, records[-1]), seq=99)
    beyond = dataclasses.replace(beyond, signature=base64.b64encode(signer.sign(beyond.message())).decode())
    verdict = verify_chain(records, [beyond], signature_check(signer))
    assert (verdict.ok, verdict.broken_seq) == (False, 99)


def test_a_checkpoint_at_zero_is_accepted(signer: Sm2Signer) -> None:
    zero = Checkpoint(0, GENESIS, timestamp(T0), signer.key_id(), "")
    zero = dataclasses.replace(zero, signature=base64.b64encode(signer.sign(zero.message())).decode())
    verdict = verify_chain([], [zero], signature_check(signer))
    assert (verdict.ok, verdict.checkpoints) == (True, 1)


def test_checkpoint_message_is_exact() -> None:
    c = Checkpoint(42, "ab" * 32, "2024-03-01T08:00:00.000000Z", "0123456789abcdef", "sig")
    assert c.message() == ("prescreen-audit-checkpoint\n42\n" + "ab" * 32 + "\n2024-03-01T08:00:00.000000Z\n").encode()


# --- vocabulary and canonical form -------------------------------------------------------------------


def test_every_event_has_a_dicom_code() -> None:
    assert set(CODES) == set(AuditEvent)
    for event, code in CODES.items():
        assert code.event_id.startswith("1101") and len(code.event_id) == 6 and code.event_id.isdigit(), event
        assert code.event_id_meaning
        assert (code.type_code is None) == (code.type_meaning is None), event
        if code.type_code is not None:
            assert code.type_code.startswith("1101") and len(code.type_code) == 6 and code.type_code.isdigit()
        assert isinstance(code.action, Action)


@pytest.mark.parametrize(
    ("event", "event_id", "type_code", "action"),
    [
        (AuditEvent.SIGN_IN, "110114", "110122", "E"),
        (AuditEvent.SIGN_OUT, "110114", "110123", "E"),
        (AuditEvent.STUDY_READ, "110110", None, "R"),
        (AuditEvent.IMAGE_READ, "110103", None, "R"),
        (AuditEvent.INSTANCE_RECEIVED, "110104", None, "C"),
        (AuditEvent.EXPORT, "110106", None, "R"),
        (AuditEvent.SERVICE_START, "110100", "110120", "E"),
        (AuditEvent.SERVICE_STOP, "110100", "110121", "E"),
        (AuditEvent.AUDIT_READ, "110101", None, "R"),
    ],
)
def test_dicom_codes_table(event: AuditEvent, event_id: str, type_code: str | None, action: str) -> None:
    code = CODES[event]
    assert (code.event_id, code.type_code, code.action.value) == (event_id, type_code, action)


def test_new_record_takes_its_fields_from_the_entry_and_the_codes() -> None:
    entry = AuditEntry(
        AuditEvent.SIGN_IN_FAILED,
        Actor(ActorKind.USER, "dr.wang", "10.1.2.3"),
        Outcome.MINOR_FAILURE,
        study_uid=None,
        detail={"reason": "bad password"},
    )
    record = new_record(7, "ab" * 32, entry, at=datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC))
    assert record == AuditRecord(
        seq=7,
        at="2024-03-01T08:00:00.123456Z",
        event="sign-in-failed",
        event_id="110114",
        event_type="110122",
        action="E",
        outcome=4,
        actor_kind="user",
        actor="dr.wang",
        address="10.1.2.3",
        study_uid=None,
        patient_hash=None,
        object_id=None,
        detail='{"reason":"bad password"}',
        prev_hash="ab" * 32,
        hash=record.hash,
    )
    assert record.hash == sm3_hex(bytes.fromhex("ab" * 32) + canonical(record))
    assert len(record.hash) == 64


def test_canonical_is_stable() -> None:
    entry = AuditEntry(AuditEvent.REPORT_SIGN, Actor.system(), detail={"b": 2, "a": "报告", "c": [1, None]})
    at = datetime(2024, 3, 1, tzinfo=UTC)
    one, two = new_record(1, GENESIS, entry, at), new_record(1, GENESIS, entry, at)
    assert canonical(one) == canonical(two)
    assert one.hash == two.hash
    assert canonical(one) == canonical(dataclasses.replace(one, hash="anything"))  # the hash is not covered
    reordered = AuditEntry(AuditEvent.REPORT_SIGN, Actor.system(), detail={"c": [1, None], "a": "报告", "b": 2})
    assert new_record(1, GENESIS, reordered, at).hash == one.hash
    assert (
        canonical(one)
        == (
            '[1,"2024-03-01T00:00:00.000000Z","report-sign","110110",null,"U",0,"system","prescreen",null,null,null,'
            'null,"{\\"a\\":\\"报告\\",\\"b\\":2,\\"c\\":[1,null]}","' + GENESIS + '"]'
        ).encode()
    )


def test_canonical_detail() -> None:
    assert canonical_detail({}) == "{}"
    assert canonical_detail({"b": 1, "a": "张三"}) == '{"a":"张三","b":1}'
    assert canonical_detail({"at": datetime(2024, 1, 1)}) == '{"at":"2024-01-01 00:00:00"}'  # default=str


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.none()), max_size=6))
def test_canonical_detail_ignores_key_order(detail: dict[str, object]) -> None:
    reversed_detail = dict(reversed(list(detail.items())))
    assert canonical_detail(detail) == canonical_detail(reversed_detail)
    assert json.loads(canonical_detail(detail)) == detail


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20))
def test_different_fields_hash_differently(a: str, b: str) -> None:
    """The canonical form is a JSON array: moving text between fields changes the hash."""
    base = new_record(1, GENESIS, AuditEntry(AuditEvent.EXPORT, Actor(ActorKind.USER, a + b)), at=T0)
    split = new_record(1, GENESIS, AuditEntry(AuditEvent.EXPORT, Actor(ActorKind.USER, a, b or None)), at=T0)
    if (a + b, None) != (a, b or None):
        assert base.hash != split.hash


def test_timestamp_of_a_naive_datetime_is_utc() -> None:
    assert timestamp(datetime(2024, 1, 2, 3, 4, 5, 6)) == "2024-01-02T03:04:05.000006Z"
    assert timestamp(datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2024-01-02T03:04:05.000006Z"


def test_timestamp_converts_to_utc() -> None:
    beijing = timezone(timedelta(hours=8))
    assert timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=beijing)) == "2024-01-01T19:04:05.000000Z"


def test_timestamp_defaults_to_now() -> None:
    before = datetime.now(UTC)
    stamp = timestamp()
    after = datetime.now(UTC)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= after
    assert len(stamp) == 27


@settings(max_examples=100, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1)))
def test_timestamps_sort_as_times(at: datetime) -> None:
    later = at + timedelta(microseconds=1)
    assert timestamp(at) < timestamp(later)
    assert timestamp(at) == timestamp(at.replace(tzinfo=UTC))
