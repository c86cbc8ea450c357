"""The outbox's retry policy: a pure decision, tested without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from prescreen.domain import DeliveryState
from prescreen.pipeline.outbox import MAX_BACKOFF_SECONDS, backoff_seconds, delivery_outcome

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n, 2.0) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff_seconds(0, 2.0) == 2.0
    assert backoff_seconds(8, 2.0) == 256.0
    assert backoff_seconds(9, 2.0) == MAX_BACKOFF_SECONDS == 300.0
    assert backoff_seconds(50, 2.0) == 300.0


def decide(attempts: int, error: str | None, permanent: bool = False) -> tuple[DeliveryState, datetime | None]:
    outcome = delivery_outcome(attempts, error, max_attempts=3, first_backoff=2.0, permanent=permanent, now=NOW)
    return outcome.state, outcome.next_attempt_at


def test_delivery_outcomes() -> None:
    assert decide(1, None) == (DeliveryState.DELIVERED, None)
    assert decide(1, "refused") == (DeliveryState.PENDING, NOW + timedelta(seconds=2))
    assert decide(2, "refused") == (DeliveryState.PENDING, NOW + timedelta(seconds=4))
    assert decide(3, "refused") == (DeliveryState.FAILED, None)  # the last attempt
    assert decide(1, "no such AE", permanent=True) == (DeliveryState.FAILED, None)


@given(st.integers(min_value=0, max_value=200), st.floats(min_value=0.001, max_value=1000))
def test_backoff_never_shrinks_and_stays_capped(attempts: int, first: float) -> None:
    now, after = backoff_seconds(attempts, first), backoff_seconds(attempts + 1, first)
    assert now <= after <= max(MAX_BACKOFF_SECONDS, first)
    assert now > 0


@given(st.integers(min_value=1, max_value=20), st.booleans())
def test_an_error_is_never_delivered_and_success_always_is(attempts: int, permanent: bool) -> None:
    assert decide(attempts, None, permanent)[0] == DeliveryState.DELIVERED
    state, retry_at = decide(attempts, "boom", permanent)
    assert state in (DeliveryState.PENDING, DeliveryState.FAILED)
    assert (state == DeliveryState.PENDING) == (retry_at is not None) == (not permanent and attempts < 3)
