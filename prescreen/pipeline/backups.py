"""The backup schedule of the service: with ``PRESCREEN_BACKUP_DIR`` set, a full set every
``PRESCREEN_BACKUP_FULL_DAYS`` (7) and an incremental one every ``PRESCREEN_BACKUP_INCREMENTAL_HOURS``
(24), keeping the newest ``PRESCREEN_BACKUP_KEEP`` (4) full chains. Of several processes or replicas
sharing the folder, the one holding its lock does it."""

from __future__ import annotations

import fcntl
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.store.backup import FULL, INCREMENTAL, BackupSet, list_sets, take_backup

log = logging.getLogger(__name__)


def due(sets: list[BackupSet], now: datetime, full_every: timedelta, incremental_every: timedelta) -> str | None:
    """Which backup is due now: ``full``, ``incremental`` or none (a pure decision)."""
    fulls = [s for s in sets if s.kind == FULL]
    if not fulls or now - datetime.fromisoformat(fulls[-1].created) >= full_every:
        return FULL
    if now - datetime.fromisoformat(sets[-1].created) >= incremental_every:
        return INCREMENTAL
    return None


def expired(sets: list[BackupSet], keep: int) -> list[BackupSet]:
    """The sets of the full chains older than the newest ``keep`` (a pure decision)."""
    fulls = [s for s in sets if s.kind == FULL]
    if len(fulls) <= keep:
        return []
    oldest_kept = datetime.fromisoformat(fulls[-keep].created)
    return [s for s in sets if datetime.fromisoformat(s.created) < oldest_kept]


@dataclass
class BackupStep:
    sessions: sessionmaker[Session]
    settings: Settings

    def run_once(self) -> bool:
        root = self.settings.backup_dir
        if root is None:
            return False
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(root / ".schedule.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process is backing up
            try:
                return self._run(root)
            except Exception as exc:  # retried at the next run; a failed backup never stops the service
                log.error("scheduled backup into %s failed: %s", root, type(exc).__name__)
                return False
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _run(self, root: Path) -> bool:
        sets = list_sets(root)
        kind = due(
            sets,
            datetime.now(UTC),
            timedelta(days=self.settings.backup_full_days),
            timedelta(hours=self.settings.backup_incremental_hours),
        )
        if kind is None:
            return False
        made = take_backup(self.settings, self.sessions, root, kind)
        log.info("scheduled %s backup %s written", kind, made.name)
        for old in expired(list_sets(root), self.settings.backup_keep):
            shutil.rmtree(old.path)
            log.info(
                "backup set %s deleted (older than the newest %d full chains)", old.name, self.settings.backup_keep
            )
        return True
