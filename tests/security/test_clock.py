"""The clock's synchronization as the kernel reports it (``adjtimex``, read only)."""

from __future__ import annotations

import pytest

from prescreen.security.clock import STA_UNSYNC, TIME_ERROR, ClockStatus, clock_status, interpret

TIME_OK = 0


@pytest.mark.parametrize(
    ("state", "status", "synchronized"),
    [
        (TIME_OK, 0x2001, True),  # STA_PLL | STA_NANO: an NTP client disciplines the clock
        (TIME_OK, STA_UNSYNC, False),  # never synchronized
        (TIME_ERROR, 0x2001, False),  # the kernel says the clock is in error
        (TIME_ERROR, STA_UNSYNC, False),
    ],
)
def test_synchronized_only_when_the_kernel_says_so(state: int, status: int, synchronized: bool) -> None:
    found = interpret(state, status, maxerror_us=16_000_000, esterror_us=250)
    assert found.synchronized is synchronized
    assert (found.max_error_ms, found.estimated_error_ms) == (16_000.0, 0.25)


def test_this_machine_is_asked_without_changing_its_clock() -> None:
    found = clock_status()
    assert isinstance(found, ClockStatus)
    assert found.synchronized in (True, False, None)
    assert set(found.as_json()) == {"synchronized", "max_error_ms", "estimated_error_ms", "source"}
