"""Sign-in, step-up and enrolment as transactions: each checks its credentials, changes the user or
session, and writes its audit record together (a refused attempt is recorded too)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import TooManyAttemptsError
from prescreen.security.audit import Actor, ActorKind, AuditEntry, AuditEvent, Outcome
from prescreen.store import audit
from prescreen.store.auth_sessions import end_session, mark_second_factor, start_session
from prescreen.store.users import (
    Principal,
    authenticate,
    check_second_factor,
    confirm_enrolment,
    sign_out_everywhere,
    start_enrolment,
)

FRESH_REPEAT = timedelta(seconds=90)
"""A session that gave a second factor this recently may present the same code again (it spans the
code's own validity: the current 30-second step and one on either side)."""


@dataclass(frozen=True)
class SignIn:
    """A successful sign-in: the user, the new session, whether a second factor was given, and
    whether the session may only enrol one (``PRESCREEN_MFA=login`` and the user has none yet)."""

    user: Principal
    session_id: str
    mfa: bool
    enrol_only: bool


def sign_in(
    sessions: sessionmaker[Session], login: str, password: str, code: str | None, address: str | None, mfa_mode: str
) -> SignIn:
    """Check the credentials and open a session; the attempt is audited whatever its outcome.

    Raises:
        NotAuthenticatedError: wrong login, password or code (one message for login and password).
        MfaRequiredError: an enrolled user without a code in ``login`` mode.
        TooManyAttemptsError: the login is locked out for now.
    """
    login_seen = login.strip().lower()[:64]
    with sessions.begin() as session:
        attempt = authenticate(session, login, password, code or None, require_mfa=mfa_mode == "login")
        actor = Actor(ActorKind.USER, login_seen, address)
        if attempt.user is None:
            error = attempt.error
            reason = "locked_out" if isinstance(error, TooManyAttemptsError) else type(error).__name__
            audit.record(
                session, AuditEntry(AuditEvent.SIGN_IN_FAILED, actor, Outcome.MINOR_FAILURE, detail={"reason": reason})
            )
            if attempt.locked_out:
                audit.record(
                    session,
                    AuditEntry(
                        AuditEvent.LOCKOUT,
                        actor,
                        Outcome.SERIOUS_FAILURE,
                        detail={"reason": "too many failed sign-ins"},
                    ),
                )
            result = None
        else:
            row = start_session(session, attempt.user.id, attempt.mfa)
            enrol_only = mfa_mode == "login" and not attempt.user.totp_enabled
            audit.record(
                session,
                AuditEntry(
                    AuditEvent.SIGN_IN,
                    actor,
                    object_id=row.id,
                    detail={"second_factor": attempt.mfa, "enrol_only": enrol_only},
                ),
            )
            result = SignIn(attempt.user, row.id, attempt.mfa, enrol_only)
    if result is None:
        assert attempt.error is not None
        raise attempt.error
    return result


def sign_out(sessions: sessionmaker[Session], user: Principal, actor: Actor) -> None:
    """Sign out everywhere (every token of the user stops working; a lost laptop's too), end the
    caller's session, and record it."""
    sign_out_everywhere(sessions, user.id)
    if user.session_id:
        end_session(sessions, user.session_id)
    audit.record_now(sessions, AuditEntry(AuditEvent.SIGN_OUT, actor, object_id=user.session_id))


def step_up(sessions: sessionmaker[Session], user: Principal, code: str, actor: Actor) -> None:
    """Check a second factor and mark the session as stepped up; a failure is recorded and raised."""
    failure: Exception | None = None
    with sessions.begin() as session:
        try:
            fresh = user.mfa_at is not None and datetime.now(UTC) - user.mfa_at <= FRESH_REPEAT
            check_second_factor(session, user.id, code, session_fresh=fresh)
        except Exception as exc:  # recorded, then raised after the record commits
            failure = exc
            audit.record(
                session,
                AuditEntry(
                    AuditEvent.STEP_UP,
                    actor,
                    Outcome.MINOR_FAILURE,
                    object_id=user.session_id,
                    detail={"reason": type(exc).__name__},
                ),
            )
        else:
            if user.session_id:
                mark_second_factor(session, user.session_id)
            audit.record(session, AuditEntry(AuditEvent.STEP_UP, actor, object_id=user.session_id))
    if failure is not None:
        raise failure


def enrol(sessions: sessionmaker[Session], user: Principal) -> str:
    """Start (or restart) TOTP enrolment; returns the new secret."""
    with sessions.begin() as session:
        return start_enrolment(session, user.id)


def confirm(sessions: sessionmaker[Session], user: Principal, code: str, actor: Actor) -> list[str]:
    """Confirm enrolment with a first code; the session counts as stepped up. Returns recovery codes."""
    with sessions.begin() as session:
        codes = confirm_enrolment(session, user.id, code)
        if user.session_id:
            mark_second_factor(session, user.session_id)
        audit.record(session, AuditEntry(AuditEvent.MFA_ENROLLED, actor, object_id=user.login))
        return codes
