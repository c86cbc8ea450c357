"""The double-review state machine: an explicit table over every (state, lease, action, actor), invariants,
random walks, and the REST flow of the acceptance test."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from prescreen.errors import ConflictError, ForbiddenError
from prescreen.triage.review import (
    ACTIONS,
    GRADES,
    STATES,
    Actor,
    Decision,
    ItemState,
    allowed_actions,
    check_item,
    decide,
    effective,
    grade_at_least,
    lease_active,
)

NOW = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=15)

FIRST = Actor("ann", "attending")  # the item's first reader (for an unread item: just an attending)
OTHER_ATTENDING = Actor("bob", "attending")
RESIDENT = Actor("rita", "resident")
ASSOCIATE_CHIEF = Actor("carl", "associate_chief")
CHIEF = Actor("chloe", "chief")
ROLES = {"first": FIRST, "attending": OTHER_ATTENDING, "resident": RESIDENT, "assoc": ASSOCIATE_CHIEF, "chief": CHIEF}
REVIEWER = "rex"  # an associate chief who is none of the actors
LEASES = ("none", "actor", "other", "expired")


def make_item(state: str, lease: str, actor: Actor) -> ItemState:
    """An item in ``state`` whose claim is absent, the actor's, someone else's, or expired.

    The first reader is always ann (none while unread); "someone else" is the natural holder of the
    state (ann; a reviewer while awaiting review), or the reviewer when that would be the actor.
    """
    first = None if state == "unread" else FIRST.user_id
    natural = REVIEWER if state == "awaiting_review" else FIRST.user_id
    holder: str | None
    expires: datetime | None
    if lease == "none":
        holder, expires = None, None
    elif lease == "actor":
        holder, expires = actor.user_id, NOW + timedelta(minutes=10)
    elif lease == "other":
        holder, expires = (natural if natural != actor.user_id else REVIEWER), NOW + timedelta(minutes=10)
    else:
        holder, expires = natural, NOW - timedelta(minutes=1)
    return ItemState(state, first, holder, expires, has_draft=state in ("draft", "returned"))


# Expected outcome of decide(make_item(state, lease, actor), action, actor) for each actor, in the order
# first reader, other attending, resident, associate chief, chief:
#   a letter = allowed, giving state u(nread) c(laimed) d(raft) a(waiting_review) r(eturned) f(inal);
#   3 = ForbiddenError (403); 9 = ConflictError (409); - = inconsistent item (ValueError).
TABLE = """
state           lease   | claim release draft sign  return amend
unread          none    | cc3cc 99999   99999 99999 99999  99999
unread          actor   | ----- -----   ----- ----- -----  -----
unread          other   | ----- -----   ----- ----- -----  -----
unread          expired | cc3cc 99999   99999 99999 99999  99999
claimed         none    | ----- -----   ----- ----- -----  -----
claimed         actor   | c---- u----   d---- 9---- 9----  9----
claimed         other   | -9399 -3333   -3333 -9999 -9999  -9999
claimed         expired | cc3cc 99999   99999 99999 99999  99999
draft           none    | d3333 99999   93333 93333 99999  99999
draft           actor   | d---- d----   d---- a---- 9----  9----
draft           other   | -3333 -3333   -3333 -3333 -9999  -9999
draft           expired | d3333 99999   93333 93333 99999  99999
awaiting_review none    | 333aa 99999   99999 333ff 333rr  99999
awaiting_review actor   | -33aa -aaaa   -9999 -33ff -33rr  -9999
awaiting_review other   | 33399 33333   99999 33333 33333  99999
awaiting_review expired | 333aa 99999   99999 333ff 333rr  99999
returned        none    | r3333 99999   93333 99999 99999  99999
returned        actor   | r---- r----   d---- 9---- 9----  9----
returned        other   | -3333 -3333   -3333 -9999 -9999  -9999
returned        expired | r3333 99999   93333 99999 99999  99999
final           none    | 99999 99999   99999 99999 99999  d33dd
final           actor   | ----- -----   ----- ----- -----  -----
final           other   | ----- -----   ----- ----- -----  -----
final           expired | 99999 99999   99999 99999 99999  d33dd
"""
CODES = {s[0]: s for s in STATES}


def parse_table() -> dict[tuple[str, str, str, str], str]:
    lines = [line for line in TABLE.strip().splitlines()]
    header = lines[0].split("|")[1].split()
    assert header == list(ACTIONS)
    table: dict[tuple[str, str, str, str], str] = {}
    for line in lines[1:]:
        left, right = line.split("|")
        state, lease = left.split()
        cells = right.split()
        assert len(cells) == len(ACTIONS) and all(len(c) == len(ROLES) for c in cells), line
        for action, cell in zip(ACTIONS, cells, strict=True):
            for role, code in zip(ROLES, cell, strict=True):
                table[(state, lease, action, role)] = code
    return table


EXPECTED = parse_table()
CASES = [(s, lease, a, r) for s in STATES for lease in LEASES for a in ACTIONS for r in ROLES]


def outcome(item: ItemState, action: str, actor: Actor) -> tuple[str, Decision | Exception]:
    try:
        decision = decide(item, action, actor, NOW, LEASE)
    except ForbiddenError as exc:
        return "3", exc
    except ConflictError as exc:
        return "9", exc
    except ValueError as exc:
        return "-", exc
    return decision.state[0], decision


def test_the_table_covers_every_combination() -> None:
    assert len(EXPECTED) == len(CASES) == 6 * 4 * 6 * 5
    assert set(EXPECTED) == set(CASES)
    assert set(EXPECTED.values()) <= {"3", "9", "-", *CODES}


@pytest.mark.parametrize(("state", "lease", "action", "role"), CASES)
def test_every_state_lease_action_and_actor(state: str, lease: str, action: str, role: str) -> None:
    actor = ROLES[role]
    item = make_item(state, lease, actor)
    code, result = outcome(item, action, actor)
    assert code == EXPECTED[(state, lease, action, role)], result
    if isinstance(result, Exception):
        assert len(str(result)) > 15, result  # every refusal says why
    else:
        check_decision(item, action, actor, result)


def check_decision(item: ItemState, action: str, actor: Actor, d: Decision) -> None:
    """Invariants of every allowed action."""
    before = effective(item, NOW)
    # the result is a consistent item
    check_item(ItemState(d.state, d.first_reader, d.claimed_by, d.claim_expires, d.has_draft))
    # a claim is a lease: set together with its expiry; a new or renewed one lasts `lease`
    assert (d.claimed_by is None) == (d.claim_expires is None)
    if action in ("claim", "draft", "amend"):
        assert d.claimed_by == actor.user_id and d.claim_expires == NOW + LEASE
    if action in ("release", "sign", "return"):
        assert d.claimed_by is None
    # signatures: only sign makes one; never final without two distinct signers of the right grades
    assert (d.signature is not None) == (action == "sign")
    if d.signature == "submitted":
        assert before.state == "draft" and d.state == "awaiting_review"
        assert actor.user_id == before.first_reader and grade_at_least(actor.grade, "attending")
    if d.state == "final":
        assert d.signature == "cosigned" and before.state == "awaiting_review"
        assert actor.user_id != d.first_reader and grade_at_least(actor.grade, "associate_chief")
    # the first reader changes only when it is first set, given up, or taken by an amendment
    if action == "amend":
        assert d.new_version and d.state == "draft" and d.first_reader == actor.user_id
    else:
        assert not d.new_version
        if not (before.state == "unread" or (before.state == "claimed" and action == "release")):
            assert d.first_reader == before.first_reader
    if d.first_reader == actor.user_id and d.state in ("claimed", "draft"):
        assert grade_at_least(actor.grade, "attending")  # a resident is never first reader
    if action == "claim" and before.state == "awaiting_review":
        assert d.state == "awaiting_review" and grade_at_least(actor.grade, "associate_chief")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("lease", LEASES)
@pytest.mark.parametrize("state", STATES)
def test_allowed_actions_are_the_buttons_the_table_allows(state: str, lease: str, role: str) -> None:
    actor = ROLES[role]
    expected = [a for a in ACTIONS if EXPECTED[(state, lease, a, role)] in CODES]
    assert allowed_actions(make_item(state, lease, actor), actor, NOW) == expected


# --- specific semantics -------------------------------------------------------------------------------


def test_the_rest_flow_of_the_acceptance_test() -> None:
    a, b = Actor("a", "attending"), Actor("b", "associate_chief")
    item = ItemState("unread", None, None, None, False)
    item = apply(item, "claim", a)
    assert (item.state, item.first_reader, item.claimed_by) == ("claimed", "a", "a")
    with pytest.raises(ConflictError, match="claimed by a"):
        decide(item, "claim", b, NOW, LEASE)
    item = apply(item, "draft", a)
    assert item.state == "draft"
    d = decide(item, "sign", a, NOW, LEASE)
    assert (d.state, d.signature, d.claimed_by) == ("awaiting_review", "submitted", None)
    item = to_item(d, has_draft=False)  # the report is now submitted, no longer a draft
    with pytest.raises(ForbiddenError, match="own report"):
        decide(item, "sign", a, NOW, LEASE)
    assert allowed_actions(item, a, NOW) == []
    assert allowed_actions(item, b, NOW) == ["claim", "sign", "return"]
    claimed = apply(item, "claim", b)  # optional
    assert (claimed.state, claimed.claimed_by) == ("awaiting_review", "b")
    for reviewed in (claimed, item):  # with or without the review claim
        d = decide(reviewed, "sign", b, NOW, LEASE)
        assert (d.state, d.signature, d.first_reader, d.claimed_by) == ("final", "cosigned", "a", None)


def test_return_and_resubmit() -> None:
    a, c = Actor("a", "attending"), Actor("c", "chief")
    item = ItemState("awaiting_review", "a", None, None, False)
    item = apply(item, "return", c)
    assert (item.state, item.first_reader, item.claimed_by, item.has_draft) == ("returned", "a", None, True)
    with pytest.raises(ConflictError, match="claim the item"):
        decide(item, "draft", a, NOW, LEASE)
    with pytest.raises(ForbiddenError, match="belongs to its first reader"):
        decide(item, "claim", Actor("b", "attending"), NOW, LEASE)
    item = apply(item, "claim", a)
    assert item.state == "returned" and item.claimed_by == "a"
    with pytest.raises(ConflictError, match="revised draft"):
        decide(item, "sign", a, NOW, LEASE)
    item = apply(item, "draft", a)
    d = decide(item, "sign", a, NOW, LEASE)
    assert (d.state, d.signature) == ("awaiting_review", "submitted")


def test_amend_starts_a_new_version_with_a_new_first_reader() -> None:
    final = ItemState("final", "a", None, None, False)
    d = decide(final, "amend", Actor("c", "chief"), NOW, LEASE)
    assert (d.state, d.first_reader, d.claimed_by, d.new_version, d.has_draft) == ("draft", "c", "c", True, True)
    item = to_item(d)
    d = decide(item, "sign", Actor("c", "chief"), NOW, LEASE)
    assert d.signature == "submitted"
    item = to_item(d, has_draft=False)
    with pytest.raises(ForbiddenError, match="own report"):  # the amender cannot co-sign the amendment
        decide(item, "sign", Actor("c", "chief"), NOW, LEASE)
    with pytest.raises(ForbiddenError, match="associate_chief or above"):  # nor the original attending
        decide(item, "sign", Actor("a", "attending"), NOW, LEASE)
    assert decide(item, "sign", Actor("x", "associate_chief"), NOW, LEASE).state == "final"
    with pytest.raises(ForbiddenError, match="may amend"):
        decide(final, "amend", Actor("r", "resident"), NOW, LEASE)
    with pytest.raises(ForbiddenError):
        decide(ItemState("final", "r", None, None, False), "amend", Actor("r", "resident"), NOW, LEASE)


def test_signing_an_empty_draft_is_a_conflict() -> None:
    item = ItemState("draft", "a", "a", NOW + LEASE, has_draft=False)
    with pytest.raises(ConflictError, match="no draft text"):
        decide(item, "sign", Actor("a", "attending"), NOW, LEASE)
    with pytest.raises(ConflictError, match="no draft to sign"):
        decide(ItemState("claimed", "a", "a", NOW + LEASE, False), "sign", Actor("a", "attending"), NOW, LEASE)


def test_a_lease_is_active_until_its_expiry_exclusive() -> None:
    item = ItemState("claimed", "a", "a", NOW, False)
    assert lease_active(item, NOW - timedelta(microseconds=1))
    assert not lease_active(item, NOW)
    assert effective(item, NOW - timedelta(microseconds=1)) == item
    assert effective(item, NOW) == ItemState("unread", None, None, None, False)
    b = Actor("b", "attending")
    with pytest.raises(ConflictError):
        decide(item, "claim", b, NOW - timedelta(microseconds=1), LEASE)
    d = decide(item, "claim", b, NOW, LEASE)
    assert (d.state, d.first_reader, d.claimed_by, d.claim_expires) == ("claimed", "b", "b", NOW + LEASE)


def test_an_expired_lease_keeps_the_draft_with_its_first_reader() -> None:
    item = ItemState("draft", "a", "a", NOW - timedelta(seconds=1), True)
    assert effective(item, NOW) == ItemState("draft", "a", None, None, True)
    assert effective(ItemState("unread", None, None, None, False), NOW) == ItemState("unread", None, None, None, False)


def test_claiming_again_renews_the_lease() -> None:
    item = ItemState("claimed", "a", "a", NOW + timedelta(minutes=1), False)
    d = decide(item, "claim", Actor("a", "attending"), NOW, timedelta(hours=1))
    assert d.claim_expires == NOW + timedelta(hours=1)
    d = decide(replace(item, state="draft", has_draft=True), "draft", Actor("a", "attending"), NOW, LEASE)
    assert d.claim_expires == NOW + LEASE  # saving a draft renews it too


def test_release() -> None:
    a = Actor("a", "attending")
    assert decide(ItemState("claimed", "a", "a", NOW + LEASE, False), "release", a, NOW, LEASE) == Decision(
        "unread", None, None, None, False
    )
    assert decide(ItemState("draft", "a", "a", NOW + LEASE, True), "release", a, NOW, LEASE) == Decision(
        "draft", "a", None, None, True
    )
    review = ItemState("awaiting_review", "a", "c", NOW + LEASE, False)
    assert decide(review, "release", Actor("c", "chief"), NOW, LEASE).claimed_by is None
    with pytest.raises(ForbiddenError, match="only the holder"):
        decide(review, "release", a, NOW, LEASE)


def test_another_reviewer_holding_the_review_blocks_sign_and_return() -> None:
    item = ItemState("awaiting_review", "a", "c", NOW + LEASE, False)
    for action in ("sign", "return"):
        with pytest.raises(ForbiddenError, match="review is claimed by c"):
            decide(item, action, Actor("d", "chief"), NOW, LEASE)
    with pytest.raises(ConflictError, match="review is claimed by c"):
        decide(item, "claim", Actor("d", "chief"), NOW, LEASE)
    assert decide(item, "sign", Actor("d", "chief"), NOW + LEASE, LEASE).state == "final"  # once it expired


@pytest.mark.parametrize(
    ("item", "action", "actor", "lease", "match"),
    [
        (ItemState("unread", None, None, None, False), "approve", FIRST, LEASE, "unknown action"),
        (ItemState("unread", None, None, None, False), "claim", FIRST, timedelta(0), "lease must be positive"),
        (ItemState("unread", None, None, None, False), "claim", Actor("x", "intern"), LEASE, "grade 'intern'"),  # type: ignore[arg-type]
        (ItemState("lost", None, None, None, False), "claim", FIRST, LEASE, "unknown item state"),
        (ItemState("claimed", "a", "a", None, False), "claim", FIRST, LEASE, "set together"),
        (ItemState("unread", "a", None, None, False), "claim", FIRST, LEASE, "unread item"),
        (ItemState("draft", None, None, None, True), "claim", FIRST, LEASE, "must have a first reader"),
        (ItemState("claimed", "a", "b", NOW + LEASE, False), "claim", FIRST, LEASE, "held by its first reader"),
        (ItemState("returned", "a", "b", NOW + LEASE, True), "claim", FIRST, LEASE, "only be held by its first reader"),
        (ItemState("awaiting_review", "a", "a", NOW + LEASE, False), "claim", FIRST, LEASE, "review claim"),
        (ItemState("final", "a", "b", NOW + LEASE, False), "amend", FIRST, LEASE, "cannot be claimed"),
    ],
)
def test_invalid_inputs_are_value_errors(
    item: ItemState, action: str, actor: Actor, lease: timedelta, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        decide(item, action, actor, NOW, lease)
    if action == "claim" and lease == LEASE:  # the item (or the grade) is invalid: no button at all
        assert allowed_actions(item, actor, NOW) == []


def test_grades() -> None:
    assert GRADES == ("resident", "attending", "associate_chief", "chief")
    for i, g in enumerate(GRADES):
        for j, minimum in enumerate(GRADES):
            assert grade_at_least(g, minimum) is (i >= j)
    with pytest.raises(ValueError, match="not one of"):
        grade_at_least("fellow", "attending")
    with pytest.raises(ValueError):
        grade_at_least("chief", "boss")


# --- random walks: invariants over whole histories -------------------------------------------------


def apply(item: ItemState, action: str, actor: Actor, now: datetime = NOW) -> ItemState:
    return to_item(decide(item, action, actor, now, LEASE))


def to_item(d: Decision, has_draft: bool | None = None) -> ItemState:
    return ItemState(
        d.state, d.first_reader, d.claimed_by, d.claim_expires, d.has_draft if has_draft is None else has_draft
    )


def test_random_histories_never_finalise_without_two_distinct_qualified_signers() -> None:
    rng = random.Random(2024)
    actors = [FIRST, OTHER_ATTENDING, RESIDENT, ASSOCIATE_CHIEF, CHIEF, Actor("cora", "chief")]
    grade = {a.user_id: a.grade for a in actors}
    finals = refusals = amendments = 0
    for _ in range(400):
        item, now = ItemState("unread", None, None, None, False), NOW
        submitted: str | None = None  # who submitted the current version, since the last return/amend
        for _ in range(40):
            now += timedelta(minutes=rng.choice([0, 0, 1, 5, 20]))
            # mostly someone doing what the UI offers them (to reach final often), sometimes anything
            able = [a for a in actors if allowed_actions(item, a, now)]
            actor = rng.choice(able) if able and rng.random() < 0.8 else rng.choice(actors)
            allowed = allowed_actions(item, actor, now)
            action = rng.choice(allowed) if allowed and rng.random() < 0.8 else rng.choice(ACTIONS)
            code, result = outcome_at(item, action, actor, now)
            assert (action in allowed) is (code == "ok"), (item, action, actor, result)
            if isinstance(result, Exception):
                refusals += 1
                assert str(result), result
                continue
            d = result
            if d.signature == "submitted":
                submitted = actor.user_id
            elif d.signature == "cosigned":
                finals += 1
                assert submitted is not None and submitted != actor.user_id
                assert submitted == d.first_reader
                assert grade_at_least(grade[submitted], "attending") and grade_at_least(actor.grade, "associate_chief")
            if action in ("return", "amend"):
                submitted = None
            if d.new_version:
                amendments += 1
                assert effective(item, now).state == "final"
            item = to_item(d, has_draft=d.has_draft)
            check_item(effective(item, now))
    assert finals > 200 and amendments > 100 and refusals > 1000, (finals, amendments, refusals)


def outcome_at(item: ItemState, action: str, actor: Actor, now: datetime) -> tuple[str, Decision | Exception]:
    try:
        return "ok", decide(item, action, actor, now, LEASE)
    except (ForbiddenError, ConflictError) as exc:
        return "refused", exc
