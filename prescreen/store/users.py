"""Users: create, look up, check a password (Argon2id, a memory-hard KDF)."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import (
    ConflictError,
    InvalidUserError,
    NotAuthenticatedError,
    TooManyAttemptsError,
)
from prescreen.store.schema_triage import User
from prescreen.triage.review import GRADES

_HASHER = PasswordHasher()
LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
SPECIALTY = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
MIN_PASSWORD = 8


@dataclass(frozen=True)
class Principal:
    """The signed-in user, as the API and the pages see them."""

    id: str
    login: str
    name: str
    grade: str
    specialties: tuple[str, ...]
    institution: str | None
    is_admin: bool
    token_version: int = 0


def principal(user: User) -> Principal:
    return Principal(
        user.id,
        user.login,
        user.name,
        user.grade,
        tuple(user.specialties or ()),
        user.institution,
        user.is_admin,
        user.token_version or 0,
    )


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def add_user(
    sessions: sessionmaker[Session],
    *,
    login: str,
    name: str,
    password: str,
    grade: str,
    specialties: Sequence[str],
    institution: str | None = None,
    is_admin: bool = False,
) -> Principal:
    """Create a user.

    Raises:
        InvalidUserError: a malformed login or specialty, an unknown grade, a short password.
        ConflictError: the login is taken.
    """
    login = login.strip().lower()
    if not LOGIN.fullmatch(login):
        raise InvalidUserError(f"login {login!r}: 2–64 lowercase letters, digits, '.', '_' or '-'")
    if grade not in GRADES:
        raise InvalidUserError(f"grade {grade!r} is not one of {', '.join(GRADES)}")
    bad = [s for s in specialties if not SPECIALTY.fullmatch(s)]
    if bad:
        raise InvalidUserError(f"specialty {bad[0]!r}: lowercase letters, digits and '-' (e.g. cardiology)")
    if len(password) < MIN_PASSWORD:
        raise InvalidUserError(f"the password needs at least {MIN_PASSWORD} characters")
    if not name.strip():
        raise InvalidUserError("the name is empty")
    user = User(
        login=login,
        name=name.strip(),
        password_hash=hash_password(password),
        grade=grade,
        specialties=sorted(set(specialties)),
        institution=institution,
        is_admin=is_admin,
    )
    try:
        with sessions.begin() as session:
            session.add(user)
    except IntegrityError as exc:
        raise ConflictError(f"login {login!r} is taken") from exc
    return principal(user)


class SignInThrottle:
    """At most ``failures`` failed sign-ins per login within ``window_seconds`` (per process);
    then every attempt for that login is refused until the oldest failure leaves the window."""

    def __init__(self, failures: int = 5, window_seconds: float = 300.0) -> None:
        self.failures = failures
        self.window = window_seconds
        self._failed: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, login: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._failed.get(login)
            while recent and now - recent[0] > self.window:
                recent.popleft()
            if recent is not None and len(recent) >= self.failures:
                wait = int(self.window - (now - recent[0])) + 1
                raise TooManyAttemptsError(f"too many failed sign-ins; try again in {wait} s")

    def failed(self, login: str) -> None:
        with self._lock:
            self._failed.setdefault(login, deque()).append(time.monotonic())

    def succeeded(self, login: str) -> None:
        with self._lock:
            self._failed.pop(login, None)


THROTTLE = SignInThrottle()


def authenticate(sessions: sessionmaker[Session], login: str, password: str) -> Principal:
    """The user with this login and password.

    Raises:
        NotAuthenticatedError: unknown login or wrong password (the same message for both).
        TooManyAttemptsError: too many recent failures for this login.
    """
    login = login.strip().lower()
    THROTTLE.check(login)
    with sessions() as session:
        user = session.scalars(select(User).where(User.login == login)).one_or_none()
    if user is None or not user.active:
        _HASHER.hash(password)  # spend the same time as a real check: do not reveal which part was wrong
        THROTTLE.failed(login)
        raise NotAuthenticatedError("wrong login or password")
    try:
        _HASHER.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        THROTTLE.failed(login)
        raise NotAuthenticatedError("wrong login or password") from None
    THROTTLE.succeeded(login)
    return principal(user)


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


def user_names(session: Session, ids: Iterable[str | None]) -> dict[str, str]:
    """Display names of the users with these ids (``None`` and unknown ids skipped)."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    return {u.id: u.name for u in session.scalars(select(User).where(User.id.in_(wanted)))}
