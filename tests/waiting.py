"""Bounded waits for tests that watch real processes: poll a condition instead of sleeping a fixed time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.2, what: str | Callable[[], str] = "condition"
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and return that.

    Args:
        predicate: the condition; exceptions it raises propagate (catch them inside it when a
            failed probe just means "not yet", e.g. a connection refused).
        timeout: seconds to wait at most.
        interval: seconds between two calls.
        what: what was waited for, or a function that says so (called on timeout, so that the
            message can show the last state or a log tail).

    Raises:
        AssertionError: ``predicate`` stayed falsy for ``timeout`` seconds (checked once more at the end).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:g} s: {message}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` (a predicate for ``wait_until``)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
