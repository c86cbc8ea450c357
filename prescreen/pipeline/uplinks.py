"""Edge uplinks: the central services an edge node forwards complete studies to, in order of
preference (``prescreen edge --forward-to A --forward-to B``), and the failover between them.

With one uplink nothing is checked: every study goes to it, with the outbox's retry and backoff.
With several, each is health-checked on its own thread every ``PRESCREEN_UPLINK_PROBE_SECONDS``
(``GET /readyz`` of a central prescreen, C-ECHO of a DICOM ``AE@host:port``) with a short timeout,
and a study goes to the first uplink, in the configured order, that is up:

* an up uplink is down after :data:`FALL` failed checks in a row, or at once when a send to it fails;
* a down uplink is up again after :data:`RISE` good checks in a row (then the edge goes back to it);
* an uplink not checked yet counts as up; when none is up, every uplink is tried in order.

With the defaults (a check every 0.5 s, 0.8 s timeout) a crashed uplink (connection refused) is left
at the next send to it, or after about 1 s of checks; a silent one (a link that drops packets, a
hung process) after two timed-out checks, at most about 2.6 s; it is used again about 1 s after it
answers again.

One delivery attempt tries the up uplinks in order until one takes the study, so a failed send to A
goes to B at once, not after the backoff; only when every uplink failed does the backoff apply. A
send in flight to an uplink that the checks find down (a link gone silent, which the send itself
would notice only at its timeout) is given up at once and the study goes to the next uplink. A
study may so reach two central services (partly or whole); each stores a SOP Instance UID once, so
nothing is stored twice on one server and nothing is lost.

The decision is pure (:func:`observe`, :func:`observe_send`, :func:`current_uplink`,
:func:`send_order`); :class:`Uplinks` holds the observations and runs the checks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from prescreen.errors import DeliveryError, InvalidDestinationError, PrescreenError
from prescreen.integration.dicom_send import DicomDestination, c_echo
from prescreen.integration.forward import service_ready

log = logging.getLogger(__name__)

RISE = 2
"""Good checks in a row before a down uplink is used again."""
FALL = 2
"""Failed checks in a row before an up uplink is left (one failed send is enough)."""
KEEPALIVE_SECONDS = 10.0
"""The checks stop this long after the outbox last asked for them (a stopped outbox leaves no thread)."""
WATCH_SECONDS = 0.05
"""How often a send in flight looks whether its uplink was found down."""
MAX_UPLINK_CHARS = 128
"""The longest uplink a delivery can record as its destination."""

Probe = Callable[[str], bool]


def is_http(uplink: str) -> bool:
    """Whether the uplink is a central service URL (STOW-RS); else it is ``AE@host:port`` (C-STORE)."""
    return uplink.startswith(("http://", "https://"))


def check_uplinks(values: Iterable[str]) -> list[str]:
    """The uplinks, in order, each checked: ``http(s)://host[:port][/path]`` (without a trailing
    ``/``) or ``AE@host:port`` / ``tls:AE@host:port``. A value may hold several, comma-separated.

    Args:
        values: the uplinks as given (``--forward-to``, ``PRESCREEN_FORWARD_TO``).

    Returns:
        The uplinks, at least one, none twice.

    Raises:
        InvalidDestinationError: none is given, one is given twice, too long, or not of either form.
    """
    uplinks: list[str] = []
    for value in values:
        for part in value.split(","):
            text = part.strip()
            if not text:
                continue
            if is_http(text):
                text = text.rstrip("/")
                try:
                    parsed = urlsplit(text)
                    host, _ = parsed.hostname, parsed.port  # the port property raises on a bad port
                except ValueError as exc:
                    raise InvalidDestinationError(f"uplink {text!r}: {exc}") from exc
                if not host:
                    raise InvalidDestinationError(f"uplink {text!r} has no host, e.g. http://central:3000")
            else:
                DicomDestination.parse(text)  # names what is wrong with an AE@host:port
            if len(text) > MAX_UPLINK_CHARS:
                raise InvalidDestinationError(f"uplink {text[:40]!r}... is longer than {MAX_UPLINK_CHARS} characters")
            if text in uplinks:
                raise InvalidDestinationError(f"uplink {text!r} is given twice")
            uplinks.append(text)
    if not uplinks:
        raise InvalidDestinationError("no uplink: give --forward-to URL or AE@host:port (or PRESCREEN_FORWARD_TO)")
    return uplinks


@dataclass(frozen=True)
class UplinkHealth:
    """What the checks say of one uplink: ``up``, and how many observations in a row said otherwise."""

    up: bool = True
    against: int = 0


def observe(health: UplinkHealth, ok: bool, *, rise: int = RISE, fall: int = FALL) -> UplinkHealth:
    """The health after one check: the state flips after ``fall`` failures (``rise`` successes) in a row.

    Args:
        health: the health before the check.
        ok: whether the check succeeded.
        rise: good checks in a row that bring a down uplink back.
        fall: failed checks in a row that take an up uplink down.
    """
    if ok == health.up:
        return UplinkHealth(health.up)
    against = health.against + 1
    if against >= (rise if ok else fall):
        return UplinkHealth(ok)
    return UplinkHealth(health.up, against)


def observe_send(ok: bool) -> UplinkHealth:
    """The health after a send: the uplink took the study (up), or did not (down, at once)."""
    return UplinkHealth(ok)


def current_uplink(uplinks: Sequence[str], health: Mapping[str, UplinkHealth]) -> str:
    """Where the next study goes: the first uplink that is up (unchecked ones count as up), else the first.

    Raises:
        ValueError: no uplink.
    """
    if not uplinks:
        raise ValueError("no uplink")
    return next((u for u in uplinks if health.get(u, UplinkHealth()).up), uplinks[0])


def send_order(uplinks: Sequence[str], health: Mapping[str, UplinkHealth]) -> list[str]:
    """The uplinks one attempt tries, in order: those up, else (none is up) all of them."""
    up = [u for u in uplinks if health.get(u, UplinkHealth()).up]
    return up or list(uplinks)


def probe(uplink: str, *, calling_ae: str = "PRESCREEN", timeout: float = 1.0) -> bool:
    """One health check: ``GET {uplink}/readyz`` answers 200, or a C-ECHO to ``AE@host:port`` succeeds,
    within ``timeout`` seconds (per step). Never raises."""
    if is_http(uplink):
        return service_ready(uplink, timeout=timeout)
    try:
        c_echo(DicomDestination.parse(uplink), calling_ae=calling_ae, timeout=timeout)
    except (PrescreenError, ValueError):
        return False
    return True


class Uplinks:
    """The uplinks of an edge node, their health, and the threads that check them.

    Thread-safe: the outbox thread asks and reports sends, one checker thread per uplink reports checks.

    Args:
        uplinks: the uplinks, in order of preference (at least one).
        probe: one health check of an uplink (``True``: it answers); must not raise.
        interval: seconds between two checks of one uplink.
        rise: good checks in a row that bring a down uplink back.
        fall: failed checks in a row that take an up uplink down.
        keepalive: the checks stop this long after the last :meth:`keep_checking`.

    Raises:
        ValueError: no uplink.
    """

    def __init__(
        self,
        uplinks: Sequence[str],
        probe: Probe,
        *,
        interval: float = 0.5,
        rise: int = RISE,
        fall: int = FALL,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        if not uplinks:
            raise ValueError("no uplink")
        self.uplinks = tuple(uplinks)
        self.probe = probe
        self.interval = interval
        self.rise = rise
        self.fall = fall
        self.keepalive = keepalive
        self._health = {u: UplinkHealth() for u in self.uplinks}
        self._lock = threading.Lock()
        self._revivals = 0
        self._wanted_until = 0.0
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    @property
    def checked(self) -> bool:
        """Whether the uplinks are health-checked: only when there is a choice (more than one)."""
        return len(self.uplinks) > 1

    @property
    def revivals(self) -> int:
        """How many times an uplink came back (down to up); a change means waiting studies may go now."""
        with self._lock:
            return self._revivals

    def health(self) -> dict[str, UplinkHealth]:
        """A copy of every uplink's health."""
        with self._lock:
            return dict(self._health)

    def is_up(self, uplink: str) -> bool:
        """Whether the uplink counts as up (an unknown one does)."""
        with self._lock:
            return self._health.get(uplink, UplinkHealth()).up

    def current(self) -> str:
        """Where the next study goes (:func:`current_uplink`)."""
        with self._lock:
            return current_uplink(self.uplinks, self._health)

    def next_to_try(self, tried: Collection[str]) -> str | None:
        """The next uplink of :func:`send_order` not in ``tried``, or ``None``."""
        with self._lock:
            order = send_order(self.uplinks, self._health)
        return next((u for u in order if u not in tried), None)

    def record_check(self, uplink: str, ok: bool) -> None:
        """Take a check's result into account (:func:`observe`)."""
        self._record(uplink, lambda before: observe(before, ok, rise=self.rise, fall=self.fall), "checks")

    def record_send(self, uplink: str, ok: bool) -> None:
        """Take a send's result into account (:func:`observe_send`)."""
        self._record(uplink, lambda _: observe_send(ok), "a send")

    def _record(self, uplink: str, change: Callable[[UplinkHealth], UplinkHealth], by: str) -> None:
        with self._lock:
            before = self._health.get(uplink)
            if before is None:
                return
            after = change(before)
            self._health[uplink] = after
            if after.up == before.up:
                return
            if after.up:
                self._revivals += 1
            current = current_uplink(self.uplinks, self._health)
            where = f"complete studies go to {current}" if self._health[current].up else "no uplink answers"
        if after.up:
            log.warning("uplink %s answers again (%s); %s", uplink, by, where)
        else:
            log.warning("uplink %s stopped answering (%s); %s", uplink, by, where)

    def keep_checking(self) -> None:
        """Have the checks run for :attr:`keepalive` more seconds (starting their threads if needed);
        the outbox calls this every round. Nothing with a single uplink."""
        if not self.checked or self._stop.is_set():
            return
        with self._lock:
            self._wanted_until = time.monotonic() + self.keepalive
            for index, uplink in enumerate(self.uplinks):
                thread = self._threads.get(uplink)
                if thread is None or not thread.is_alive():
                    thread = threading.Thread(target=self._check, args=(uplink,), name=f"uplink-{index}", daemon=True)
                    self._threads[uplink] = thread
                    thread.start()

    def _check(self, uplink: str) -> None:
        while not self._stop.is_set():
            with self._lock:
                if time.monotonic() >= self._wanted_until:
                    self._threads.pop(uplink, None)
                    return
            try:
                ok = self.probe(uplink)
            except Exception as exc:  # a probe must not raise; if one does, the uplink did not answer
                log.error("health check of uplink %s failed: %s", uplink, type(exc).__name__)
                ok = False
            if self._stop.is_set():
                return
            self.record_check(uplink, ok)
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the checks (for good) and wait for their threads."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    def run_watched(self, uplink: str, send: Callable[[], None]) -> None:
        """Run ``send`` to ``uplink``; give it up when the checks find the uplink down meanwhile.

        With checks running and the uplink up, the send runs on a thread of its own while this one
        watches the uplink's health; when it goes down, the send is abandoned (it ends in the
        background at its own timeout, and what it stored there is stored once).

        Raises:
            DeliveryError: the uplink stopped answering during the send; or what ``send`` raised.
        """
        if not self.checked or not self.is_up(uplink):
            send()
            return
        failure: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                send()
            except BaseException as exc:  # handed to the watching thread
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="uplink-send", daemon=True).start()
        while not done.wait(WATCH_SECONDS):
            self.keep_checking()
            if not self.is_up(uplink):
                raise DeliveryError(f"uplink {uplink} stopped answering during the send (given up)")
        if failure:
            raise failure[0]
