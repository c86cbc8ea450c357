"""Users: create, change, look up, check a password (Argon2id, a memory-hard KDF) and a second
factor (TOTP), and the sign-in throttle (in the database, so that it holds across processes)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import (
    ConflictError,
    InvalidUserError,
    MfaRequiredError,
    NotAuthenticatedError,
    NotFoundError,
    TooManyAttemptsError,
)
from prescreen.security import totp
from prescreen.security.roles import Permission, Role, parse_roles, permissions_of_roles
from prescreen.store.schema_security import SignInFailure
from prescreen.store.schema_triage import User
from prescreen.triage.review import GRADES

_HASHER = PasswordHasher()
LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
SPECIALTY = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
INSTITUTION = re.compile(r"^[\w][\w .()-]{0,127}$")
MIN_PASSWORD = 12
COMMON_PASSWORDS = frozenset(
    [
        "123456789012",
        "1234567890123",
        "password1234",
        "passwordpassword",
        "qwertyuiopas",
        "qwerty123456",
        "iloveyou1234",
        "admin1234567",
        "administrator",
        "welcome12345",
        "letmein12345",
        "changeme1234",
        "abc123456789",
        "111111111111",
        "000000000000",
        "aaaaaaaaaaaa",
        "1q2w3e4r5t6y",
        "a1b2c3d4e5f6",
        "p@ssw0rd1234",
        "password123!",
        "woaini520131",
        "woaini123456",
        "zhang1234567",
        "5201314520131",
        "qwertyqwerty",
        "123123123123",
        "987654321098",
        "asdfghjklasdf",
    ]
)
"""Passwords refused whatever their length: a small list of the commonest (global and Chinese)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the API and the pages see them: a signed-in user or a machine client."""

    id: str
    login: str
    name: str
    grade: str
    specialties: tuple[str, ...]
    institution: str | None
    is_admin: bool
    token_version: int = 0
    roles: tuple[Role, ...] = (Role.READER,)
    #: the institutions whose studies this principal sees; empty: every institution
    institutions: tuple[str, ...] = ()
    kind: str = "user"
    session_id: str | None = None
    mfa_at: datetime | None = None
    totp_enabled: bool = False
    permissions: frozenset[Permission] = field(default=frozenset(), compare=False)

    def can(self, permission: Permission) -> bool:
        return permission in (self.permissions or permissions_of_roles(self.roles))

    def serves(self, institution: str | None) -> bool:
        """Whether this principal's scope covers a study of ``institution`` (every one when unscoped;
        a scoped principal never sees a study of no institution)."""
        return not self.institutions or institution in self.institutions

    def with_session(self, session_id: str | None, mfa_at: datetime | None) -> Principal:
        return replace(self, session_id=session_id, mfa_at=mfa_at)


def user_roles(user: User) -> tuple[Role, ...]:
    stored = user.roles or ([Role.READER, Role.ADMIN] if user.is_admin else [Role.READER])
    return tuple(r for r in Role if r in {Role(v) for v in stored})


def principal(user: User) -> Principal:
    roles = user_roles(user)
    institutions = tuple(user.institutions or ([user.institution] if user.institution else []))
    return Principal(
        user.id,
        user.login,
        user.name,
        user.grade,
        tuple(user.specialties or ()),
        institutions[0] if institutions else None,
        Role.ADMIN in roles,
        user.token_version or 0,
        roles=roles,
        institutions=institutions,
        totp_enabled=bool(user.totp_enabled),
        permissions=permissions_of_roles(roles),
    )


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_password_policy(password: str, login: str, min_length: int = MIN_PASSWORD) -> None:
    """Refuse a weak password: shorter than ``min_length``, containing the login, or a common one.

    Raises:
        InvalidUserError: the rule it breaks.
    """
    if len(password) < min_length:
        raise InvalidUserError(f"the password needs at least {min_length} characters")
    if login and login.lower() in password.lower():
        raise InvalidUserError("the password must not contain the login")
    if password.lower() in COMMON_PASSWORDS or len(set(password)) < 4:
        raise InvalidUserError("the password is too common or too simple; choose another")


def _institutions(values: Sequence[str]) -> list[str]:
    cleaned = sorted({v.strip() for v in values if v.strip()})
    bad = [v for v in cleaned if not INSTITUTION.fullmatch(v)]
    if bad:
        raise InvalidUserError(f"institution {bad[0]!r}: letters, digits, spaces and '.', '(', ')', '-' (≤ 128)")
    return cleaned


def add_user(
    sessions: sessionmaker[Session],
    *,
    login: str,
    name: str,
    password: str,
    grade: str | None = None,
    specialties: Sequence[str] = (),
    institution: str | None = None,
    institutions: Sequence[str] = (),
    is_admin: bool = False,
    roles: Sequence[str] = (),
    min_password: int = MIN_PASSWORD,
) -> Principal:
    """Create a user.

    A reader needs a grade and at least one specialty; other roles need neither. ``is_admin`` (the
    older flag) adds the admin role to the reader's.

    Raises:
        InvalidUserError: a malformed login, specialty or institution, an unknown grade or role, a
            forbidden role mix (admin / security_admin / auditor), a weak password.
        ConflictError: the login is taken.
    """
    login = login.strip().lower()
    if not LOGIN.fullmatch(login):
        raise InvalidUserError(f"login {login!r}: 2–64 lowercase letters, digits, '.', '_' or '-'")
    parsed = parse_roles([*(roles or [Role.READER]), *([Role.ADMIN] if is_admin else [])])
    if Role.READER in parsed:
        if grade not in GRADES:
            raise InvalidUserError(f"grade {grade!r} is not one of {', '.join(GRADES)} (a reader needs one)")
        if not specialties:
            raise InvalidUserError("a reader needs at least one --specialty (the worklists they read)")
    elif grade is not None and grade not in GRADES:
        raise InvalidUserError(f"grade {grade!r} is not one of {', '.join(GRADES)}")
    bad = [s for s in specialties if not SPECIALTY.fullmatch(s)]
    if bad:
        raise InvalidUserError(f"specialty {bad[0]!r}: lowercase letters, digits and '-' (e.g. cardiology)")
    check_password_policy(password, login, min_password)
    if not name.strip():
        raise InvalidUserError("the name is empty")
    served = _institutions([*institutions, *([institution] if institution else [])])
    user = User(
        login=login,
        name=name.strip(),
        password_hash=hash_password(password),
        grade=grade or "none",
        specialties=sorted(set(specialties)),
        institution=served[0] if served else None,
        institutions=served,
        is_admin=Role.ADMIN in parsed,
        roles=[r.value for r in parsed],
        password_changed_at=datetime.now(UTC),
    )
    try:
        with sessions.begin() as session:
            session.add(user)
    except IntegrityError as exc:
        raise ConflictError(f"login {login!r} is taken") from exc
    return principal(user)


def _user_by_login(session: Session, login: str) -> User:
    user = session.scalars(select(User).where(User.login == login.strip().lower())).one_or_none()
    if user is None:
        raise NotFoundError(f"no user with login {login!r}")
    return user


def set_roles(session: Session, login: str, roles: Sequence[str]) -> Principal:
    """Replace a user's roles (in the caller's transaction).

    Raises:
        NotFoundError: no such login.
        InvalidUserError: an unknown role or a forbidden mix.
    """
    user = _user_by_login(session, login)
    parsed = parse_roles(roles)
    if Role.READER in parsed and (user.grade not in GRADES or not user.specialties):
        raise InvalidUserError("a reader needs a grade and a specialty; add the user again as a reader")
    user.roles = [r.value for r in parsed]
    user.is_admin = Role.ADMIN in parsed
    user.token_version = (user.token_version or 0) + 1  # new rights: sign in again
    return principal(user)


def set_active(session: Session, login: str, active: bool) -> Principal:
    """Disable (or enable again) a user; disabling ends every session at once."""
    user = _user_by_login(session, login)
    user.active = active
    user.token_version = (user.token_version or 0) + 1
    return principal(user)


def reset_password(session: Session, login: str, password: str, min_password: int = MIN_PASSWORD) -> Principal:
    """Set a new password, end every session and clear the sign-in failures of the login."""
    user = _user_by_login(session, login)
    check_password_policy(password, user.login, min_password)
    user.password_hash = hash_password(password)
    user.password_changed_at = datetime.now(UTC)
    user.token_version = (user.token_version or 0) + 1
    session.execute(delete(SignInFailure).where(SignInFailure.login == user.login))
    return principal(user)


def unlock(session: Session, login: str) -> Principal:
    """Lift a sign-in lockout now (the security administrator's decision): the failures are forgotten."""
    user = _user_by_login(session, login)
    session.execute(delete(SignInFailure).where(SignInFailure.login == user.login))
    return principal(user)


def reset_totp(session: Session, login: str) -> Principal:
    """Remove a user's second factor (a lost phone): they enrol again at the next sign-in."""
    user = _user_by_login(session, login)
    user.totp_secret, user.totp_enabled, user.recovery_hashes = None, False, []
    user.totp_last_step = user.totp_last_sign_in_step = None
    user.token_version = (user.token_version or 0) + 1
    return principal(user)


@dataclass(frozen=True)
class Throttle:
    """At most ``failures`` failed sign-ins per login within ``window_seconds``, counted in the
    database (every process sees the same count); then every attempt for that login is refused
    until the oldest failure leaves the window."""

    failures: int = 5
    window_seconds: float = 300.0

    def check(self, session: Session, login: str) -> None:
        since = datetime.now(UTC) - timedelta(seconds=self.window_seconds)
        recent = session.scalars(
            select(SignInFailure.at)
            .where(SignInFailure.login == login, SignInFailure.at >= since)
            .order_by(SignInFailure.at)
        ).all()
        if len(recent) >= self.failures:
            oldest = recent[0] if recent[0].tzinfo else recent[0].replace(tzinfo=UTC)
            wait = int(self.window_seconds - (datetime.now(UTC) - oldest).total_seconds()) + 1
            raise TooManyAttemptsError(f"too many failed sign-ins; try again in {max(wait, 1)} s")

    def failed(self, session: Session, login: str) -> bool:
        """Count a failure; ``True`` when this one locks the login out."""
        session.add(SignInFailure(login=login, at=datetime.now(UTC)))
        session.flush()
        since = datetime.now(UTC) - timedelta(seconds=self.window_seconds)
        count = session.scalar(
            select(func.count())
            .select_from(SignInFailure)
            .where(SignInFailure.login == login, SignInFailure.at >= since)
        )
        return (count or 0) >= self.failures

    def succeeded(self, session: Session, login: str) -> None:
        session.execute(delete(SignInFailure).where(SignInFailure.login == login))


THROTTLE = Throttle()


@dataclass(frozen=True)
class SignInAttempt:
    """What a sign-in gave: the user (``None`` when refused), whether a second factor was given, and
    the refusal (raised by the caller after it has recorded the attempt)."""

    login: str
    user: Principal | None
    mfa: bool = False
    error: Exception | None = None
    locked_out: bool = False


def authenticate(
    session: Session, login: str, password: str, code: str | None = None, *, require_mfa: bool = False
) -> SignInAttempt:
    """Check a login, a password and (for an enrolled user) a TOTP or recovery code, in the caller's
    transaction (which also records the attempt in the audit trail and commits).

    ``require_mfa``: an enrolled user must give a code (``PRESCREEN_MFA=login``). A user who has not
    enrolled signs in with the password; the API then lets them only enrol (see ``serving.auth``).
    """
    login = login.strip().lower()
    try:
        THROTTLE.check(session, login)
    except TooManyAttemptsError as exc:
        return SignInAttempt(login, None, error=exc)
    user = session.scalars(select(User).where(User.login == login)).one_or_none()
    if user is None or not user.active:
        _HASHER.hash(password)  # spend the same time as a real check: do not reveal which part was wrong
        locked = THROTTLE.failed(session, login)
        return SignInAttempt(login, None, error=NotAuthenticatedError("wrong login or password"), locked_out=locked)
    try:
        _HASHER.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        locked = THROTTLE.failed(session, login)
        return SignInAttempt(login, None, error=NotAuthenticatedError("wrong login or password"), locked_out=locked)
    mfa = False
    if user.totp_enabled and code:
        if not verify_second_factor(user, code, signing_in=True):
            locked = THROTTLE.failed(session, login)
            return SignInAttempt(
                login, None, error=NotAuthenticatedError("wrong or already used second-factor code"), locked_out=locked
            )
        mfa = True
    elif user.totp_enabled and require_mfa:
        return SignInAttempt(
            login, None, error=MfaRequiredError("this account signs in with a TOTP code too: send totp")
        )
    THROTTLE.succeeded(session, login)
    return SignInAttempt(login, principal(user), mfa=mfa)


def verify_second_factor(user: User, code: str, *, signing_in: bool = False) -> bool:
    """Check a TOTP code or spend a recovery code; updates ``user``.

    A TOTP code is single-use per purpose: one sign-in, one step-up (or enrolment) — never two
    sign-ins or two step-ups with the same code, and never an older code than the last one spent for
    that purpose. The password guards the sign-in besides; a recovery code is spent whatever it is
    used for."""
    code = code.strip()
    if user.totp_secret and len(code.replace(" ", "")) == totp.DIGITS:
        last = user.totp_last_sign_in_step if signing_in else user.totp_last_step
        step = totp.accepted_step(user.totp_secret, code, last)
        if step is None:
            return False
        if signing_in:
            user.totp_last_sign_in_step = step
        else:
            user.totp_last_step = step
        return True
    remaining = list(user.recovery_hashes or [])
    for stored in remaining:
        try:
            _HASHER.verify(stored, code.lower())
        except (VerificationError, InvalidHashError):
            continue
        remaining.remove(stored)
        user.recovery_hashes = remaining
        return True
    return False


def start_enrolment(session: Session, user_id: str) -> str:
    """A new TOTP secret for the user, not yet in force (until :func:`confirm_enrolment`). An
    enrolled user replaces theirs only after a step-up (the caller checks)."""
    user = _user(session, user_id)
    user.totp_secret = totp.new_secret()
    user.totp_enabled = False
    user.totp_last_step = user.totp_last_sign_in_step = None
    return user.totp_secret


def confirm_enrolment(session: Session, user_id: str, code: str) -> list[str]:
    """Put the pending secret in force with a first valid code; returns fresh recovery codes (shown once).

    Raises:
        ConflictError: nothing to confirm (enrol first).
        NotAuthenticatedError: a wrong code.
    """
    user = _user(session, user_id)
    if not user.totp_secret:
        raise ConflictError("no TOTP enrolment to confirm: POST /v1/auth/totp/enroll first")
    step = totp.accepted_step(user.totp_secret, code, user.totp_last_step)
    if step is None:
        raise NotAuthenticatedError("wrong or already used TOTP code")
    user.totp_last_step = step
    user.totp_enabled = True
    codes = totp.new_recovery_codes()
    user.recovery_hashes = [_HASHER.hash(c) for c in codes]
    return codes


def check_second_factor(session: Session, user_id: str, code: str, session_fresh: bool = False) -> None:
    """Check a step-up code for an enrolled user (``session_fresh``: the caller's session gave a
    second factor moments ago, so the code it spent then is not refused as a replay).

    Raises:
        ConflictError: the user has no second factor yet.
        NotAuthenticatedError: a wrong or replayed code.
    """
    user = _user(session, user_id)
    if not user.totp_enabled:
        raise ConflictError("enrol a second factor first: POST /v1/auth/totp/enroll, then /v1/auth/totp/confirm")
    # the code this very session just spent (enrolment's confirmation, a step-up a moment ago): it
    # proves nothing new and grants nothing new, so it is accepted without counting as a second use
    if (
        session_fresh
        and user.totp_secret
        and user.totp_last_step is not None
        and totp.code_at(user.totp_secret, user.totp_last_step) == code.replace(" ", "")
    ):
        return
    if not verify_second_factor(user, code):
        raise NotAuthenticatedError("wrong or already used second-factor code")


def _user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id, with_for_update=True)
    if user is None or not user.active:
        raise NotAuthenticatedError("the user of this token no longer exists")
    return user


def get_principal(sessions: sessionmaker[Session], user_id: str, token_version: int | None = None) -> Principal:
    """The user a token was issued to (raises ``NotAuthenticatedError`` when the user is gone or
    has signed out everywhere since the token was issued)."""
    with sessions() as session:
        user = session.get(User, user_id)
    if user is None or not user.active:
        raise NotAuthenticatedError("the user of this token no longer exists")
    if token_version is not None and token_version != (user.token_version or 0):
        raise NotAuthenticatedError("this session was signed out; sign in again")
    return principal(user)


def sign_out_everywhere(sessions: sessionmaker[Session], user_id: str) -> None:
    """Invalidate every token issued to the user so far."""
    with sessions.begin() as session:
        user = session.get(User, user_id, with_for_update=True)
        if user is not None:
            user.token_version = (user.token_version or 0) + 1


def list_users(sessions: sessionmaker[Session]) -> list[Principal]:
    with sessions() as session:
        return [principal(u) for u in session.scalars(select(User).order_by(User.login))]


def user_active(sessions: sessionmaker[Session]) -> dict[str, bool]:
    with sessions() as session:
        return {u.login: bool(u.active) for u in session.scalars(select(User))}


def user_names(session: Session, ids: Iterable[str | None]) -> dict[str, str]:
    """Display names of the users with these ids (``None`` and unknown ids skipped)."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    return {u.id: u.name for u in session.scalars(select(User).where(User.id.in_(wanted)))}
