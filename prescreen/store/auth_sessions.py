"""Sign-in sessions: each token names one; a session ends on sign-out or after it sat idle too long,
and remembers when its user last gave a second factor (for sensitive operations)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import NotAuthenticatedError
from prescreen.store.schema_security import AuthSession

TOUCH_EVERY = timedelta(seconds=30)
"""A session's last-seen time is written at most this often (not on every request)."""


def _utc(at: datetime | None) -> datetime | None:
    return None if at is None else (at if at.tzinfo else at.replace(tzinfo=UTC))


def start_session(session: Session, user_id: str, mfa: bool) -> AuthSession:
    """A new session for a user who just signed in (``mfa``: with a second factor)."""
    now = datetime.now(UTC)
    row = AuthSession(user_id=user_id, created_at=now, last_seen_at=now, mfa_at=now if mfa else None)
    session.add(row)
    session.flush()
    return row


def check_session(sessions: sessionmaker[Session], session_id: str, user_id: str, idle: timedelta) -> datetime | None:
    """Whether a session is alive; returns when its second factor was last given. Marks it seen.

    Raises:
        NotAuthenticatedError: unknown, ended, another user's, or idle longer than ``idle`` (then ended).
    """
    now = datetime.now(UTC)
    with sessions() as session:
        row = session.get(AuthSession, session_id)
        if row is None or row.user_id != user_id or row.ended_at is not None:
            raise NotAuthenticatedError("this session has ended; sign in again")
        last_seen = _utc(row.last_seen_at) or now
        mfa_at = _utc(row.mfa_at)
    if now - last_seen > idle:
        end_session(sessions, session_id)
        raise NotAuthenticatedError(
            f"the session was idle for more than {int(idle.total_seconds() // 60)} minutes; sign in again"
        )
    if now - last_seen > TOUCH_EVERY:
        with sessions.begin() as session:
            session.execute(update(AuthSession).where(AuthSession.id == session_id).values(last_seen_at=now))
    return mfa_at


def end_session(sessions: sessionmaker[Session], session_id: str) -> None:
    with sessions.begin() as session:
        session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id, AuthSession.ended_at.is_(None))
            .values(ended_at=datetime.now(UTC))
        )


def mark_second_factor(session: Session, session_id: str) -> datetime:
    """Record that the session's user just gave a second factor (step-up)."""
    now = datetime.now(UTC)
    session.execute(update(AuthSession).where(AuthSession.id == session_id).values(mfa_at=now, last_seen_at=now))
    return now
