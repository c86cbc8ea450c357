"""A background thread that runs pipeline steps until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Step(Protocol):
    """One pipeline step: does one unit of work, ``True`` when there was some."""

    def run_once(self) -> bool: ...


class StepLoop:
    """Runs its steps in order, again and again; sleeps ``poll_seconds`` when none had work.

    Args:
        name: the thread's name (logs, debugging).
        steps: the steps, run in this order each round.
        poll_seconds: the pause after an idle round.
    """

    def __init__(self, name: str, steps: Sequence[Step], poll_seconds: float) -> None:
        self.name = name
        self.steps = list(steps)
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_round(self) -> bool:
        """Each step once; ``True`` when any had work. A failing step is logged, not fatal (the
        database may be briefly unavailable)."""
        busy = False
        for step in self.steps:
            try:
                busy = step.run_once() or busy
            except Exception as exc:
                log.error("%s step %s failed: %s", self.name, type(step).__name__, type(exc).__name__)
        return busy

    def run(self) -> None:
        while not self._stop.is_set():
            if not self.run_round():
                self._stop.wait(self.poll_seconds)

    @property
    def alive(self) -> bool:
        """Whether the loop's thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
