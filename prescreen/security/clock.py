"""Whether the server clock, which dates every signature and audit record, is kept synchronized.

The kernel knows: an NTP client (chrony, ntpd, systemd-timesyncd) that disciplines the clock clears
``STA_UNSYNC`` and sets the estimated error; ``adjtimex(2)`` with no modes reads that state without
changing anything and without any daemon's tools. The service shows it on ``/v1/status`` and
``/readyz`` (an unsynchronized clock does not stop the service: sign times are then only as good as
the machine's own clock, which an auditor must be told).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import asdict, dataclass
from typing import Any

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of Linux (``<sys/timex.h>``)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockStatus:
    """The clock's synchronization as the kernel reports it.

    Attributes:
        synchronized: an NTP client keeps the clock in step (``None``: the kernel could not be asked).
        max_error_ms: the kernel's bound on the clock's error, in milliseconds.
        estimated_error_ms: its estimate of the error.
        source: how this was learnt.
    """

    synchronized: bool | None
    max_error_ms: float | None = None
    estimated_error_ms: float | None = None
    source: str = "adjtimex"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def interpret(state: int, status: int, maxerror_us: int, esterror_us: int) -> ClockStatus:
    """The status from ``adjtimex``'s return value and fields (a pure decision)."""
    synchronized = state != TIME_ERROR and not status & STA_UNSYNC
    return ClockStatus(synchronized, maxerror_us / 1000.0, esterror_us / 1000.0)


def clock_status() -> ClockStatus:
    """Ask the kernel (Linux ``adjtimex``, read only); ``synchronized=None`` where it cannot be asked."""
    name = ctypes.util.find_library("c")
    if name is None:
        return ClockStatus(None, source="unavailable")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()  # modes 0: read, change nothing
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return ClockStatus(None, source="unavailable")
    if state < 0:
        return ClockStatus(None, source="unavailable")
    return interpret(state, int(timex.status), int(timex.maxerror), int(timex.esterror))
