"""The audit step: every ``PRESCREEN_AUDIT_CHECKPOINT_SECONDS`` it signs the chain's head with the
service's SM2 key (when the chain grew), and streams the records not yet sent to
``PRESCREEN_AUDIT_SYSLOG`` (RFC 5424 over UDP; a collector that is down loses nothing here, the
records stay in the database and the next run resends from where the last send succeeded)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.security.keys import audit_signer
from prescreen.security.syslog import SyslogSender, syslog_line
from prescreen.store.audit import records_after, sign_checkpoint

log = logging.getLogger(__name__)
SYSLOG_BATCH = 500


@dataclass
class AuditStep:
    """Signs checkpoints and streams records; one per process."""

    sessions: sessionmaker[Session]
    settings: Settings
    sent_seq: int | None = None
    _sender: SyslogSender | None = field(default=None, init=False)

    def run_once(self) -> bool:
        try:
            sign_checkpoint(self.sessions, audit_signer(self.settings))
        except Exception:  # a failed signature is retried at the next run; never fatal to the service
            log.exception("could not sign an audit checkpoint")
        if self.settings.audit_syslog:
            self._stream()
        return False

    def _stream(self) -> None:
        if self._sender is None:
            self._sender = SyslogSender(self.settings.audit_syslog or "")
        with self.sessions() as session:
            if self.sent_seq is None:  # a process streams what is written from its start on
                from prescreen.store.audit import head_seq

                self.sent_seq = head_seq(session)
                return
            records = records_after(session, self.sent_seq, SYSLOG_BATCH)
        for record in records:
            try:
                self._sender.send(syslog_line(record))
            except OSError as exc:
                log.warning(
                    "audit syslog %s: %s; will resend from record %d",
                    self.settings.audit_syslog,
                    type(exc).__name__,
                    record.seq,
                )
                return
            self.sent_seq = record.seq
