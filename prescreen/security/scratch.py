"""Where decoded uploads and temporary files go: memory, not a disk.

A multipart upload larger than 1 MB is spooled by Starlette to a temporary file, and a WFDB record is
written to a temporary folder for the ``wfdb`` reader: plaintext patient data. The service points
Python's temporary files (``tempfile.tempdir``, which both use) at ``PRESCREEN_SCRATCH_DIR``, by
default ``/dev/shm`` (a tmpfs: RAM) where it exists, is writable and has room for two of the largest
uploads; else the system's temporary folder, with a warning that plaintext may reach its disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from prescreen.config import Settings

log = logging.getLogger(__name__)
SHARED_MEMORY = Path("/dev/shm")


def choose_scratch(settings: Settings, shared_memory: Path = SHARED_MEMORY) -> tuple[Path, bool]:
    """The scratch folder and whether it is memory-backed (a pure choice but for the checks of the
    candidate folder)."""
    if settings.scratch_dir is not None:
        return settings.scratch_dir, _is_tmpfs(settings.scratch_dir)
    writable = shared_memory.is_dir() and os.access(shared_memory, os.W_OK | os.X_OK)
    if writable and shutil.disk_usage(shared_memory).free >= 2 * settings.max_upload_bytes:
        return shared_memory, True
    return Path(tempfile.gettempdir()), _is_tmpfs(Path(tempfile.gettempdir()))


def _is_tmpfs(path: Path) -> bool:
    """Whether ``path`` lies on a memory file system (``/proc/mounts``)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if len(m) > 2 and (resolved + "/").startswith(m[1].rstrip("/") + "/")),
        key=lambda m: len(m[1]),
        default=None,
    )
    return best is not None and best[2] in ("tmpfs", "ramfs")


def use_scratch(settings: Settings) -> Path:
    """Point this process's temporary files at the scratch folder (a private subfolder, mode 0700,
    one per process)."""
    root, in_memory = choose_scratch(settings)
    current = Path(tempfile.gettempdir())
    if current.parent == root and current.name.startswith(f"prescreen-{os.getpid()}-"):
        return current
    folder = Path(tempfile.mkdtemp(prefix=f"prescreen-{os.getpid()}-", dir=root))
    tempfile.tempdir = str(folder)
    if not in_memory:
        log.warning(
            "temporary files (spooled uploads, WFDB records being read) go to %s, which is not in memory: "
            "set PRESCREEN_SCRATCH_DIR to a tmpfs so no plaintext patient data reaches a disk",
            folder,
        )
    return folder
