"""Priority levels, SLA due times, aging and escalation of worklist items.

Levels, most urgent first: ``stat``, ``urgent``, ``routine``. Each item gets a *due* time when it
enters a worklist: ``received_at + target(priority)`` (defaults: stat 30 min, urgent 2 h, routine 4 h).

Aging rule
----------
An item's *effective* priority depends only on the time left until it is due::

    effective_priority(due, now) = the most urgent level whose target >= due - now

so with the default targets:

* ``due - now <= 30 min`` (overdue included) -> ``stat``;
* ``30 min < due - now <= 2 h`` -> ``urgent``;
* ``due - now > 2 h`` -> ``routine``.

A stat item is due at most 30 min after it arrives, so it is stat from the start; an urgent item starts
urgent and becomes stat when 30 min remain; a routine item becomes urgent when 2 h remain and stat when
30 min remain. As ``now`` only grows, the effective priority never becomes less urgent. An item starts in
its own level (``due - received_at`` is exactly its target), so aging never *lowers* a priority.

Order within a worklist (:func:`sort_key`): effective priority, then AI score (higher first, no score
last), then waiting time (received earlier first).

Why aging: with a strict ``(priority, score)`` order, a steady stream of urgent items starves routine
ones, which then wait past their due time although the reader had enough capacity overall. With aging,
an item close to its deadline overtakes newer, less pressing work, so while the readers' capacity
suffices no item waits past its due time (``tests/triage/test_priority.py`` simulates both orders).

Database queries
----------------
Because the effective priority is a function of ``due`` alone, each band is a range of ``due``:
:func:`band_bounds` gives, for a given ``now``, the half-open range ``(low, high]`` of each band
(``low`` exclusive, ``high`` inclusive, ``None`` = unbounded)::

    stat:    due <= now + 30 min
    urgent:  now + 30 min < due <= now + 2 h
    routine: now + 2 h < due

so a worklist can be fetched band by band with index range scans on ``due`` (then ordered by score
and received time inside a band).

Escalation
----------
:func:`escalation_level` says which escalation threshold an item has reached: 0, 75 (75 % of its
target elapsed) or 100 (due time reached).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from prescreen.domain import Priority

PRIORITIES: tuple[Priority, ...] = tuple(Priority)
"""All levels, most urgent first."""

ESCALATION_LEVELS: tuple[int, ...] = (0, 75, 100)
"""Values :func:`escalation_level` returns: percent of the SLA target elapsed, as thresholds."""

SortKey = tuple[int, int, float, datetime]
"""What :func:`sort_key` returns; smaller sorts first."""


def rank(p: Priority) -> int:
    """The rank of a priority level: 0 for stat (most urgent), 1 for urgent, 2 for routine.

    Args:
        p: a priority level.

    Raises:
        ValueError: ``p`` is not a priority level.
    """
    try:
        return PRIORITIES.index(p)
    except ValueError:
        raise ValueError(f"{p!r} is not one of {', '.join(PRIORITIES)}") from None


def most_urgent(*levels: Priority) -> Priority:
    """The most urgent of one or more priority levels.

    Args:
        *levels: priority levels (at least one).

    Raises:
        ValueError: no level was given, or one is not a priority level.
    """
    if not levels:
        raise ValueError("most_urgent() needs at least one priority")
    return min(levels, key=rank)


@dataclass(frozen=True)
class SlaTargets:
    """How long after it was received an item of each priority is due.

    Attributes:
        stat: target of stat items (default 30 min).
        urgent: target of urgent items (default 2 h).
        routine: target of routine items (default 4 h).

    Raises:
        ValueError: a target is not positive, or they are not ordered ``stat <= urgent <= routine``.
    """

    stat: timedelta = timedelta(minutes=30)
    urgent: timedelta = timedelta(hours=2)
    routine: timedelta = timedelta(hours=4)

    def __post_init__(self) -> None:
        for p in PRIORITIES:
            value = getattr(self, p)
            if not isinstance(value, timedelta):
                raise ValueError(f"SLA target for {p} must be a timedelta, not {type(value).__name__}")
            if value <= timedelta(0):
                raise ValueError(f"SLA target for {p} must be positive, not {value}")
        if not self.stat <= self.urgent <= self.routine:
            raise ValueError(
                f"SLA targets must be ordered stat <= urgent <= routine, not "
                f"stat {self.stat}, urgent {self.urgent}, routine {self.routine}"
            )

    def target(self, p: Priority) -> timedelta:
        """The target of one priority level.

        Args:
            p: a priority level.

        Raises:
            ValueError: ``p`` is not a priority level.
        """
        rank(p)
        value: timedelta = getattr(self, p)
        return value


DEFAULT_TARGETS = SlaTargets()


def due_at(received_at: datetime, priority: Priority, targets: SlaTargets = DEFAULT_TARGETS) -> datetime:
    """When an item is due: its received time plus the target of its priority.

    Args:
        received_at: when the item entered the worklist.
        priority: its priority (from routing).
        targets: the SLA targets.

    Raises:
        ValueError: ``priority`` is not a priority level.
    """
    return received_at + targets.target(priority)


def effective_priority(due: datetime, now: datetime, targets: SlaTargets = DEFAULT_TARGETS) -> Priority:
    """The aged priority of an item: the most urgent level whose target is >= the time left until due.

    Overdue items (``due <= now``) are stat. The result never becomes less urgent as ``now`` grows.

    Args:
        due: the item's due time.
        now: the current time.
        targets: the SLA targets.
    """
    remaining = due - now
    for p in PRIORITIES:
        if remaining <= targets.target(p):
            return p
    return Priority.ROUTINE


def band_bounds(
    now: datetime, targets: SlaTargets = DEFAULT_TARGETS
) -> dict[Priority, tuple[datetime | None, datetime | None]]:
    """The range of due times of each effective-priority band at ``now``.

    Each range is half-open ``(low, high]``: ``low < due <= high``, ``None`` meaning unbounded. The three
    ranges partition the time line, and ``effective_priority(due, now, targets) == p`` exactly when
    ``due`` lies in ``band_bounds(now, targets)[p]``.

    Args:
        now: the current time.
        targets: the SLA targets.
    """
    stat_high = now + targets.stat
    urgent_high = now + targets.urgent
    return {
        Priority.STAT: (None, stat_high),
        Priority.URGENT: (stat_high, urgent_high),
        Priority.ROUTINE: (urgent_high, None),
    }


def in_band(due: datetime, bounds: tuple[datetime | None, datetime | None]) -> bool:
    """Whether ``due`` lies in a ``(low, high]`` range from :func:`band_bounds`.

    Args:
        due: a due time.
        bounds: ``(low, high)``, ``low`` exclusive, ``high`` inclusive, ``None`` unbounded.
    """
    low, high = bounds
    return (low is None or due > low) and (high is None or due <= high)


def sort_key(
    due: datetime,
    score: float | None,
    received_at: datetime,
    now: datetime,
    targets: SlaTargets = DEFAULT_TARGETS,
) -> SortKey:
    """Sort key of a worklist item (ascending = read first).

    Effective priority first, then AI score (higher first, items without a score after those with
    one), then received time (longer waiting first).

    Args:
        due: the item's due time.
        score: its AI score, or None when no model scored it.
        received_at: when it entered the worklist.
        now: the current time.
        targets: the SLA targets.
    """
    band = rank(effective_priority(due, now, targets))
    if score is None:
        return (band, 1, 0.0, received_at)
    return (band, 0, -float(score), received_at)


def escalation_level(received_at: datetime, due: datetime, now: datetime) -> int:
    """How much of an item's SLA target has elapsed, as an escalation threshold.

    Returns 100 once ``now >= due``, 75 once ``now >= received_at + 75 % of (due - received_at)``,
    else 0. The thresholds are inclusive: exactly 75 % elapsed is level 75.

    Args:
        received_at: when the item entered the worklist.
        due: its due time.
        now: the current time.

    Raises:
        ValueError: ``due`` is not after ``received_at``.
    """
    target = due - received_at
    if target <= timedelta(0):
        raise ValueError(f"due time {due.isoformat()} is not after received time {received_at.isoformat()}")
    elapsed = now - received_at
    if elapsed >= target:
        return 100
    # Compare 4 * elapsed with 3 * target: exact for timedelta (integer microseconds), no rounding.
    if elapsed * 4 >= target * 3:
        return 75
    return 0
