"""The core vocabularies: one order-priority vocabulary that screening order and worklist priority
both read, and StrEnums that are their stored strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prescreen.domain import (
    ORDER_PRIORITY_ALIASES,
    DeliveryState,
    JobState,
    OrderPriority,
    Priority,
    ReviewState,
    StudyStatus,
)
from prescreen.store.queue import SCREENED_FIRST
from prescreen.triage.priority import PRIORITIES, most_urgent, rank
from prescreen.triage.rules import order_priority_level

aliases = st.sampled_from(sorted(ORDER_PRIORITY_ALIASES))
spelled = st.builds(
    lambda alias, lower, pad: f"{' ' * pad}{alias.lower() if lower else alias}{' ' * pad}",
    aliases,
    st.booleans(),
    st.integers(0, 2),
)


@given(spelled)
def test_every_spelling_parses_to_one_stored_value_and_parsing_is_idempotent(value: str) -> None:
    parsed = OrderPriority.parse(value)
    assert parsed is not None
    assert parsed is ORDER_PRIORITY_ALIASES[value.strip().upper()]
    assert OrderPriority.parse(parsed) is parsed


@given(spelled)
def test_screening_order_and_worklist_priority_agree(value: str) -> None:
    """The defect this vocabulary fixes: ASAP raised the worklist priority but was not screened
    first, URGENT the reverse."""
    parsed = OrderPriority.parse(value)
    assert parsed is not None
    asks = order_priority_level(value)
    assert asks == parsed.level
    assert (parsed.value in SCREENED_FIRST) == parsed.screened_first == (asks is not None)


def test_the_known_mappings() -> None:
    assert {a for a, p in ORDER_PRIORITY_ALIASES.items() if p.level == Priority.STAT} == {"STAT", "S"}
    assert {a for a, p in ORDER_PRIORITY_ALIASES.items() if p.level == Priority.URGENT} == {
        "HIGH",
        "URGENT",
        "ASAP",
        "A",
    }
    assert set(SCREENED_FIRST) == {"STAT", "HIGH"}
    assert OrderPriority.parse(None) is None and OrderPriority.parse("  ") is None


@given(st.text(min_size=1, max_size=12).filter(lambda t: t.strip() and t.strip().upper() not in ORDER_PRIORITY_ALIASES))
def test_an_unknown_value_is_refused_with_the_vocabulary_and_asks_for_nothing(value: str) -> None:
    with pytest.raises(ValueError, match="must be one of STAT, HIGH, ROUTINE, MEDIUM, LOW"):
        OrderPriority.parse(value)
    assert order_priority_level(value) is None


@given(st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=5))
def test_most_urgent_is_the_lowest_rank(levels: list[Priority]) -> None:
    assert rank(most_urgent(*levels)) == min(rank(p) for p in levels)
    assert most_urgent(*levels) in levels


def test_priority_order_and_ranks() -> None:
    assert PRIORITIES == (Priority.STAT, Priority.URGENT, Priority.ROUTINE)
    assert [p.rank for p in PRIORITIES] == [rank(p) for p in PRIORITIES] == [0, 1, 2]
    assert rank("urgent") == 1  # a stored string ranks like its member


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (StudyStatus, {"received", "screening", "screened", "failed", "unscreenable", "forwarding", "forwarded"}),
        (JobState, {"pending", "running", "done", "unscreenable", "failed"}),
        (DeliveryState, {"pending", "sending", "delivered", "failed"}),
        (ReviewState, {"unread", "claimed", "draft", "awaiting_review", "returned", "final"}),
    ],
)
def test_states_are_the_stored_strings(enum: type, values: set[str]) -> None:
    assert {m.value for m in enum} == values
    assert all(m == m.value and isinstance(m, str) for m in enum)
