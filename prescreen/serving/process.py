"""The service process on the host: it dies with its parent (``prctl(PR_SET_PDEATHSIG)``), so
``kill -9`` of ``prescreen serve`` leaves no server or worker holding the HTTP and DICOM ports; and
its state is readable by its owner only."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; ``False`` where that
    is not available (not Linux). Exits at once when the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = _libc()
    if libc is None or libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return True


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``): a large image decoded in
    a request would otherwise keep the process's resident size at its peak."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only (not musl)
        libc.malloc_trim(0)


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters (glibc ``malloc.h``)."""


def reuse_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let glibc keep freed memory for the next request instead of returning it at once.

    By default, glibc serves an allocation over 128 KB with a fresh ``mmap`` and unmaps it when
    freed, and gives back the heap's free top beyond 128 KB. Every decoded image then faults
    fresh pages in from the kernel: about 2,800 pages, 21.2 against 14.8 ms per chest-radiograph
    screening on this project's 2-core benchmark machine. Here allocations below ``mmap_threshold`` come from the
    heap, and up to ``trim_threshold`` of freed memory stays there for reuse; :class:`IdleTrim`
    hands it back once a burst of requests is over.

    Returns:
        ``False`` where ``mallopt`` is not available (not glibc) or refused a value.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


class IdleTrim:
    """Releases freed heap memory (:func:`release_memory`) once no screening has asked for
    ``delay`` seconds, on a thread of its own. Trimming after every request cost the next one about
    5 ms (it faults its memory back in); a burst of requests now pays once, after its last one."""

    def __init__(self, delay: float = 0.5, release: Callable[[], None] | None = None) -> None:
        self.delay = delay
        self.release = release or release_memory
        self._due: float | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def touch(self) -> None:
        """A screening just ended: trim ``delay`` seconds from now unless another one ends first."""
        with self._wake:
            self._due = time.monotonic() + self.delay
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="idle-trim", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._due is None or time.monotonic() < self._due:
                    self._wake.wait(None if self._due is None else max(0.0, self._due - time.monotonic()))
                self._due = None
            self.release()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (``find_library`` runs ``ldconfig`` in a child process)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def restrict_to_owner(home: Path) -> int:
    """Remove group and other permissions from ``home`` and everything under it; returns how many
    paths changed. Patient data must not be readable by other local users."""
    changed = 0
    if not home.exists():
        return 0
    for path in [home, *home.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            path.chmod(mode & 0o700)
            changed += 1
    return changed
