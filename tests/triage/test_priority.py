"""Priority levels, SLA due times, aging bands and escalation; a simulation of aging vs strict order."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from prescreen.triage.priority import (
    PRIORITIES,
    Priority,
    SlaTargets,
    band_bounds,
    due_at,
    effective_priority,
    escalation_level,
    in_band,
    most_urgent,
    rank,
    sort_key,
)

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
US = timedelta(microseconds=1)
DEFAULT = SlaTargets()


def test_levels_and_ranks() -> None:
    assert PRIORITIES == ("stat", "urgent", "routine")
    assert [rank(p) for p in PRIORITIES] == [0, 1, 2]
    with pytest.raises(ValueError, match="'asap' is not one of stat, urgent, routine"):
        rank("asap")  # type: ignore[arg-type]
    assert most_urgent("routine", "stat", "urgent") == "stat"
    assert most_urgent("routine") == "routine"
    with pytest.raises(ValueError):
        most_urgent()


def test_default_targets_and_due_times() -> None:
    assert (DEFAULT.stat, DEFAULT.urgent, DEFAULT.routine) == (30 * MIN, 120 * MIN, 240 * MIN)
    assert [DEFAULT.target(p) for p in PRIORITIES] == [30 * MIN, 120 * MIN, 240 * MIN]
    assert due_at(T0, "stat") == T0 + 30 * MIN
    assert due_at(T0, "urgent", DEFAULT) == T0 + 2 * 60 * MIN
    assert due_at(T0, "routine", SlaTargets(routine=timedelta(hours=8))) == T0 + timedelta(hours=8)
    with pytest.raises(ValueError):
        DEFAULT.target("later")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stat": timedelta(0)},
        {"urgent": -MIN},
        {"stat": 3 * 60 * MIN},  # stat > urgent
        {"urgent": 5 * 60 * MIN},  # urgent > routine
        {"routine": 60 * MIN},
        {"stat": 30},  # not a timedelta
    ],
)
def test_invalid_targets(kwargs: dict[str, timedelta]) -> None:
    with pytest.raises(ValueError):
        SlaTargets(**kwargs)


def test_equal_targets_are_allowed() -> None:
    same = SlaTargets(stat=MIN, urgent=MIN, routine=MIN)
    assert effective_priority(T0 + MIN, T0, same) == "stat"
    assert effective_priority(T0 + MIN + US, T0, same) == "routine"


# --- aging ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        (-timedelta(days=1), "stat"),
        (timedelta(0), "stat"),
        (30 * MIN - US, "stat"),
        (30 * MIN, "stat"),  # inclusive: exactly the stat target left is stat
        (30 * MIN + US, "urgent"),
        (120 * MIN, "urgent"),
        (120 * MIN + US, "routine"),
        (240 * MIN, "routine"),
        (timedelta(days=3), "routine"),
    ],
)
def test_effective_priority_boundaries(remaining: timedelta, expected: Priority) -> None:
    assert effective_priority(T0 + remaining, T0) == expected


@pytest.mark.parametrize("priority", PRIORITIES)
def test_an_item_starts_in_its_own_level_and_ages_towards_stat(priority: Priority) -> None:
    due = due_at(T0, priority)
    assert effective_priority(due, T0) == priority
    previous = rank(priority)
    now = T0
    while now <= due + 60 * MIN:
        current = rank(effective_priority(due, now))
        assert current <= previous, now  # never less urgent as time passes
        previous = current
        now += MIN
    assert previous == 0


def test_routine_item_timeline() -> None:
    due = due_at(T0, "routine")
    assert effective_priority(due, T0 + 120 * MIN - US) == "routine"
    assert effective_priority(due, T0 + 120 * MIN) == "urgent"  # 2 h remain
    assert effective_priority(due, T0 + 210 * MIN - US) == "urgent"
    assert effective_priority(due, T0 + 210 * MIN) == "stat"  # 30 min remain
    urgent_due = due_at(T0, "urgent")
    assert effective_priority(urgent_due, T0 + 90 * MIN - US) == "urgent"
    assert effective_priority(urgent_due, T0 + 90 * MIN) == "stat"


def test_aging_is_monotonic_for_random_items() -> None:
    rng = random.Random(3)
    targets = SlaTargets(stat=timedelta(minutes=10), urgent=timedelta(minutes=45), routine=timedelta(hours=6))
    for _ in range(300):
        due = T0 + timedelta(seconds=rng.randint(-7200, 30000))
        times = sorted(T0 + timedelta(seconds=rng.randint(0, 40000)) for _ in range(8))
        ranks = [rank(effective_priority(due, t, targets)) for t in times]
        assert ranks == sorted(ranks, reverse=True)


# --- bands for database queries ----------------------------------------------------------------------


def test_band_bounds_are_half_open_and_partition_time() -> None:
    bounds = band_bounds(T0)
    assert bounds == {
        "stat": (None, T0 + 30 * MIN),
        "urgent": (T0 + 30 * MIN, T0 + 120 * MIN),
        "routine": (T0 + 120 * MIN, None),
    }
    assert list(bounds) == list(PRIORITIES)
    edges = [T0 + 30 * MIN, T0 + 120 * MIN]
    probes = [T0 - timedelta(days=1), T0] + [e + d for e in edges for d in (-US, timedelta(0), US)]
    probes.append(T0 + timedelta(days=2))
    for due in probes:
        hits = [p for p in PRIORITIES if in_band(due, bounds[p])]
        assert hits == [effective_priority(due, T0)], due  # exactly one band, the effective priority


def test_band_bounds_agree_with_effective_priority_for_custom_targets() -> None:
    rng = random.Random(11)
    targets = SlaTargets(stat=timedelta(minutes=5), urgent=timedelta(minutes=5), routine=timedelta(hours=1))
    for _ in range(500):
        now = T0 + timedelta(seconds=rng.randint(0, 10_000))
        due = now + timedelta(seconds=rng.choice([-1, 0, 1, 299, 300, 301, 3599, 3600, 3601, rng.randint(-9999, 9999)]))
        bounds = band_bounds(now, targets)
        assert [p for p in PRIORITIES if in_band(due, bounds[p])] == [effective_priority(due, now, targets)]


def test_band_bounds_inclusivity_matches_a_sql_style_filter() -> None:
    """What a query ``low < due_at AND due_at <= high`` returns is exactly the band."""
    now = T0
    dues = [now + timedelta(minutes=m) for m in range(-10, 300, 5)]
    for p, (low, high) in band_bounds(now).items():
        selected = [d for d in dues if (low is None or d > low) and (high is None or d <= high)]
        assert selected == [d for d in dues if effective_priority(d, now) == p]


# --- ordering ---------------------------------------------------------------------------------------


def test_sort_key_orders_by_band_then_score_then_wait() -> None:
    now = T0 + 60 * MIN
    items = {
        "stat-low": (due_at(T0 + 50 * MIN, "stat"), 0.1, T0 + 50 * MIN),
        "aged-routine": (due_at(T0 - 200 * MIN, "routine"), None, T0 - 200 * MIN),  # 20 min left: stat
        "urgent-high": (due_at(T0 + 55 * MIN, "urgent"), 0.99, T0 + 55 * MIN),
        "urgent-high-older": (due_at(T0 + 40 * MIN, "urgent"), 0.99, T0 + 40 * MIN),
        "urgent-none": (due_at(T0, "urgent"), None, T0),
        "routine-high": (due_at(T0 + 59 * MIN, "routine"), 1.0, T0 + 59 * MIN),
        "routine-zero": (due_at(T0 + 58 * MIN, "routine"), 0.0, T0 + 58 * MIN),
    }
    order = sorted(items, key=lambda k: sort_key(*items[k], now))
    assert order == [
        "stat-low",
        "aged-routine",  # stat band, no score: after scored stat items
        "urgent-high-older",
        "urgent-high",
        "urgent-none",
        "routine-high",
        "routine-zero",
    ]


def test_sort_key_uses_targets() -> None:
    due = T0 + 60 * MIN
    assert sort_key(due, 0.5, T0, T0)[0] == 1
    assert sort_key(due, 0.5, T0, T0, SlaTargets(stat=timedelta(hours=1)))[0] == 0


# --- escalation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", PRIORITIES)
def test_escalation_at_exactly_75_and_100_percent(priority: Priority) -> None:
    target = DEFAULT.target(priority)
    due = due_at(T0, priority)
    assert escalation_level(T0, due, T0) == 0
    assert escalation_level(T0, due, T0 - MIN) == 0
    assert escalation_level(T0, due, T0 + target * 3 / 4 - US) == 0
    assert escalation_level(T0, due, T0 + target * 3 / 4) == 75
    assert escalation_level(T0, due, due - US) == 75
    assert escalation_level(T0, due, due) == 100
    assert escalation_level(T0, due, due + timedelta(days=1)) == 100


def test_escalation_is_exact_for_odd_targets() -> None:
    due = T0 + timedelta(microseconds=7)  # 75 % = 5.25 µs
    assert escalation_level(T0, due, T0 + timedelta(microseconds=5)) == 0
    assert escalation_level(T0, due, T0 + timedelta(microseconds=6)) == 75
    due = T0 + timedelta(microseconds=4)  # 75 % = 3 µs exactly
    assert escalation_level(T0, due, T0 + timedelta(microseconds=3)) == 75
    with pytest.raises(ValueError, match="not after"):
        escalation_level(T0, T0, T0)


# --- why aging: a simulation -------------------------------------------------------------------------
#
# One reader takes the top item of the worklist every READ_EVERY minutes (5 min: 12 items an hour).
# Items arrive at random minutes with random priorities (5 % stat, 15 % routine, 80 % urgent) and
# random AI scores: a 4 h morning rush at about 12.5 items/h, then 4 h at 4 items/h. Overall the reader
# has ample capacity (about 66 items arrive; 96 could be read in the 8 h), but during the rush the
# stat and urgent items alone keep the reader busy almost all the time.
#
# * Strict order (priority, then score): a routine item that arrives during the rush waits until no
#   stat or urgent item is left, which can take longer than its 4 h target: it goes overdue. Low-score
#   urgent items can starve the same way behind higher-score urgent ones.
# * Aging order (sort_key): as a routine item nears its due time it becomes urgent (2 h left), then
#   stat (30 min left), and overtakes newer work; the rush's backlog is spread by deadline, and no item
#   waits past its due time. (The guarantee needs the items due within the next 30 min to fit into
#   30 min of reading: within the stat band the order is by score, not by due time.)

READ_EVERY = timedelta(minutes=5)
SEEDS = range(30)


@dataclass(frozen=True)
class SimItem:
    received_at: datetime
    priority: Priority
    score: float
    due: datetime


def arrivals(seed: int) -> list[SimItem]:
    rng = random.Random(seed)
    items = []
    for minute in range(8 * 60):
        rate_per_hour = 12.5 if minute < 4 * 60 else 4.0
        if rng.random() < rate_per_hour / 60:
            draw = rng.random()
            priority: Priority = "stat" if draw < 0.05 else "routine" if draw < 0.20 else "urgent"
            received = T0 + timedelta(minutes=minute)
            items.append(SimItem(received, priority, round(rng.random(), 3), due_at(received, priority)))
    return items


def simulate(items: list[SimItem], aging: bool) -> list[tuple[SimItem, datetime]]:
    """Read items one every READ_EVERY minutes, top of the list first; returns (item, read at)."""
    pending = sorted(items, key=lambda i: i.received_at)
    waiting: list[SimItem] = []
    read: list[tuple[SimItem, datetime]] = []
    now = T0
    while pending or waiting:
        while pending and pending[0].received_at <= now:
            waiting.append(pending.pop(0))
        if waiting:
            if aging:
                top = min(waiting, key=lambda i: sort_key(i.due, i.score, i.received_at, now))
            else:
                top = min(waiting, key=lambda i: (rank(i.priority), -i.score, i.received_at))
            waiting.remove(top)
            read.append((top, now))
        now += READ_EVERY
    return read


def overdue(read: list[tuple[SimItem, datetime]]) -> list[SimItem]:
    return [item for item, at in read if at > item.due]


def test_simulation_load_is_within_capacity() -> None:
    for seed in SEEDS:
        items = arrivals(seed)
        assert len(items) < 8 * 60 * MIN / READ_EVERY  # fewer arrivals than reads in the shift
        # an earliest-deadline-first reader meets every deadline: the load is feasible
        pending, now = sorted(items, key=lambda i: i.received_at), T0
        waiting: list[SimItem] = []
        while pending or waiting:
            while pending and pending[0].received_at <= now:
                waiting.append(pending.pop(0))
            if waiting:
                top = min(waiting, key=lambda i: i.due)
                waiting.remove(top)
                assert now <= top.due
            now += READ_EVERY


def test_with_aging_no_item_waits_past_its_due_time() -> None:
    for seed in SEEDS:
        read = simulate(arrivals(seed), aging=True)
        assert len(read) == len(arrivals(seed))
        assert overdue(read) == [], seed


def test_strict_priority_order_lets_routine_items_go_overdue() -> None:
    starved: dict[int, list[timedelta]] = {}
    for seed in SEEDS:
        read = simulate(arrivals(seed), aging=False)
        late = [at - item.due for item, at in read if at > item.due and item.priority == "routine"]
        if late:
            starved[seed] = late
    assert len(starved) >= 5, starved  # 6 of the 30 seeds; up to 75 min late
    assert max(max(late) for late in starved.values()) > 60 * MIN
    for seed in starved:  # the same arrivals, read in the aging order: all on time
        assert overdue(simulate(arrivals(seed), aging=True)) == []


def test_simulation_is_deterministic() -> None:
    assert arrivals(5) == arrivals(5)
    assert simulate(arrivals(5), aging=True) == simulate(arrivals(5), aging=True)
