"""Streaming the SQLite database to ``PRESCREEN_REPLICA_DIR`` with Litestream, as a child process of
the service, watched by a step that restarts it when it died (see :mod:`prescreen.store.replica`).

The child is asked to stop with the service (SIGTERM, then SIGKILL). A service killed outright leaves
its replicator running; the next start finds it by its pid file and stops it first, so two
replicators never write one replica.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from prescreen.config import Settings
from prescreen.security.sm import write_private
from prescreen.store.replica import litestream_binary, litestream_config, sqlite_database

log = logging.getLogger(__name__)


def stop_stray(pid_file: Path, config: Path, timeout: float = 10.0) -> bool:
    """Stop the replicator a killed service left running (its pid in ``pid_file``, its command line
    naming ``config``). ``True`` when there was one."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    command: list[bytes] = []
    deadline = time.monotonic() + 2.0
    while not any(command) and time.monotonic() < deadline:  # empty while a process is being set up
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if not any(command):
            time.sleep(0.05)
    if str(config).encode() not in command or not any(part.endswith(b"litestream") for part in command):
        return False  # the pid was reused by something else
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _running(pid: int) -> bool:
    """The process exists and has not exited (an exited child not yet reaped is a zombie: ``Z``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Replicator:
    """One ``litestream replicate`` process for the service's SQLite database.

    Args:
        settings: ``PRESCREEN_REPLICA_DIR`` (the target) and ``..._SYNC_SECONDS``.
        database: the SQLite file.
    """

    def __init__(self, settings: Settings, database: Path) -> None:
        if settings.replica_dir is None:
            raise ValueError("no PRESCREEN_REPLICA_DIR")
        self.replica = settings.replica_dir
        self.config = settings.home / "litestream.yml"
        self.log_file = settings.home / "litestream.log"
        self.pid_file = settings.home / "litestream.pid"
        self.database = database
        self.sync_seconds = settings.replica_sync_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Replicator:
        self.replica.mkdir(parents=True, exist_ok=True, mode=0o700)
        if stop_stray(self.pid_file, self.config):
            log.warning("stopped the replicator a killed service had left running")
        write_private(self.config, litestream_config(self.database, self.replica, self.sync_seconds).encode())
        with open(self.log_file, "ab") as out:  # Litestream logs paths and transaction ids, no data
            self.process = subprocess.Popen(
                [litestream_binary(), "replicate", "-config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.pid_file.write_text(str(self.process.pid))
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop streaming; Litestream ships what it has not shipped yet before it exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ReplicationStep:
    """Restarts the replicator when it has died (logged: continuous capture had a gap)."""

    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator

    def run_once(self) -> bool:
        if self.replicator.alive:
            return False
        code = self.replicator.process.returncode if self.replicator.process is not None else None
        log.error("litestream stopped (exit %s): continuous capture restarts; see %s", code, self.replicator.log_file)
        self.replicator.start()
        return True


def start_replication(settings: Settings) -> Replicator | None:
    """The running replicator of a SQLite service with ``PRESCREEN_REPLICA_DIR``, else ``None``."""
    if settings.replica_dir is None:
        return None
    database = sqlite_database(settings)
    if database is None:  # PostgreSQL: the server archives its WAL (README, continuous capture)
        return None
    return Replicator(settings, database).start()
