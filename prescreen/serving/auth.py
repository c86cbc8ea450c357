"""Who is calling, and may they: OAuth2 password flow (bearer JWT) for people, API keys for machine
clients, the same JWT in an HttpOnly session cookie for the pages, and one explicit permission on
every route.

* **People** sign in with a password and, once enrolled, a TOTP code (``PRESCREEN_MFA=login``: at
  every sign-in; ``step-up``: only before sensitive operations). Each sign-in is a session in the
  database; its tokens name it. A session ends on sign-out or after ``PRESCREEN_SESSION_IDLE_MINUTES``
  idle. A user who must give a second factor but has not enrolled gets a token that can only enrol.
* **Sensitive operations** (amending a final report, exporting, changing models, rules, users or
  clients, reading the audit trail) need a second factor given within ``PRESCREEN_STEP_UP_MINUTES``:
  :func:`require_fresh` answers 401 ``step_up_required`` otherwise.
* **Machine clients** (PACS, modalities, edge nodes) send ``Authorization: Bearer psk_...``; they act
  for their institution only.
* **Anonymous** callers may do what ``PRESCREEN_ANONYMOUS_PERMISSIONS`` allows: nothing by default.

Refusals are audited (by the error handler), sign-ins and step-ups by the routes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from prescreen.config import Settings, get_settings
from prescreen.errors import ForbiddenError, NotAuthenticatedError, StepUpRequiredError
from prescreen.security.audit import Actor, ActorKind
from prescreen.security.roles import Permission
from prescreen.security.sm import write_private
from prescreen.store.auth_sessions import check_session
from prescreen.store.clients import authenticate_client, is_client_key
from prescreen.store.users import Principal, get_principal

__all__ = ["SESSION_COOKIE", "Permission", "Principal", "caller", "require", "require_fresh", "require_user"]

SESSION_COOKIE = "prescreen_session"
ALGORITHM = "HS256"
ENROL_ONLY = "enrol"
"""The scope of a token that may only enrol a second factor."""


def secret_key(settings: Settings) -> str:
    """The token signing key: ``PRESCREEN_SECRET_KEY``, else one made once and kept (mode 0600)
    in ``$PRESCREEN_HOME/secret.key``. Never in the code."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path = settings.home / "secret.key"
    if not path.exists():
        # written whole and linked into place: a concurrent start or a crash never leaves an empty or
        # half-written key, and the first writer wins
        write_private(path, secrets.token_urlsafe(48).encode())
    key = path.read_text().strip()
    if len(key) < 32:
        raise NotAuthenticatedError(f"the signing key in {path} is too short; delete it to make a new one")
    return key


def issue_token(user: Principal, settings: Settings, session_id: str | None = None, scope: str | None = None) -> str:
    """A signed token for ``user`` in sign-in session ``session_id`` (``scope``: a restricted token)."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": user.id,
        "ver": user.token_version,
        "iat": now,
        "exp": now + timedelta(minutes=settings.token_ttl_minutes),
    }
    if session_id:
        claims["sid"] = session_id
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, secret_key(settings), algorithm=ALGORITHM)


def read_claims(token: str, settings: Settings) -> dict[str, Any]:
    """The claims of a token signed with our key (HS256 only: ``alg: none`` and other algorithms fail).

    Raises:
        NotAuthenticatedError: a token that is malformed, forged or expired.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret_key(settings), algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise NotAuthenticatedError("the token has expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise NotAuthenticatedError("the token is not valid") from None
    return claims


def read_token(token: str, settings: Settings) -> str:
    """The user id a token was issued to."""
    return str(read_claims(token, settings)["sub"])


_bearer = OAuth2PasswordBearer(tokenUrl="/v1/auth/token", auto_error=False)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def principal_of_token(request: Request, raw: str) -> Principal:
    """The principal a bearer token or session cookie stands for.

    Raises:
        NotAuthenticatedError: a bad, expired, revoked or idle credential.
    """
    ingestor = getattr(request.app.state, "ingestor", None)
    if ingestor is None:
        raise NotAuthenticatedError("the service is starting")
    if is_client_key(raw):
        return authenticate_client(ingestor.sessions, raw, client_address(request))
    settings = get_settings()
    claims = read_claims(raw, settings)
    user = get_principal(ingestor.sessions, str(claims["sub"]), int(claims.get("ver", 0)))
    session_id = claims.get("sid")
    if not isinstance(session_id, str):
        raise NotAuthenticatedError("the token names no sign-in session; sign in again")
    mfa_at = check_session(ingestor.sessions, session_id, user.id, timedelta(minutes=settings.session_idle_minutes))
    user = user.with_session(session_id, mfa_at)
    if claims.get("scope") == ENROL_ONLY:
        user = replace(user, permissions=frozenset({Permission.HEALTH}))
    return user


def caller(request: Request, token: Annotated[str | None, Depends(_bearer)]) -> Principal | None:
    """The signed-in user or client, or ``None`` for an anonymous call. The ``/v1`` API takes bearer
    credentials only; the session cookie counts for the pages (``/ui``), whose forms are checked for
    their origin: a cookie alone, sent by a browser from another site, opens no API route."""
    cookie = None if token or not request.url.path.startswith("/ui/") else request.cookies.get(SESSION_COOKIE)
    if not token and not cookie:
        return None
    try:
        user = principal_of_token(request, token or cookie or "")
    except NotAuthenticatedError:
        if token:
            raise  # a bad bearer token is an error; a stale page cookie is just no session
        return None
    request.state.principal = user
    return user


def actor_of(request: Request, user: Principal | None) -> Actor:
    """The audit trail's active participant for this request."""
    address = client_address(request)
    if user is None:
        return Actor(ActorKind.ANONYMOUS, "anonymous", address)
    return Actor(ActorKind.CLIENT if user.kind == "client" else ActorKind.USER, user.login, address)


def require(permission: Permission) -> Callable[..., Any]:
    """A dependency that lets a call through only with ``permission``: returns the principal, or
    ``None`` for an anonymous caller where anonymous callers hold that permission."""

    # defaults, not Annotated: these closures' annotations are strings that FastAPI resolves in the
    # module's globals, where the local ``inner`` does not exist
    def dependency(user: Principal | None = Depends(caller)) -> Principal | None:
        if user is None:
            if permission == Permission.HEALTH or permission in get_settings().anonymous_permissions:
                return None
            raise NotAuthenticatedError("sign in first: send 'Authorization: Bearer TOKEN' from /v1/auth/token")
        if not user.can(permission):
            if user.permissions == frozenset({Permission.HEALTH}) and user.kind == "user":
                raise ForbiddenError(
                    "enrol a second factor first: POST /v1/auth/totp/enroll, then /v1/auth/totp/confirm"
                )
            raise ForbiddenError(f"your role does not allow {permission.value}")
        return user

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the route audit test
    return dependency


def require_user(permission: Permission) -> Callable[..., Any]:
    """Like :func:`require`, but anonymous callers are always refused."""
    inner = require(permission)

    def dependency(user: Principal | None = Depends(inner)) -> Principal:
        if user is None:
            raise NotAuthenticatedError("sign in first: send 'Authorization: Bearer TOKEN' from /v1/auth/token")
        return user

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


def second_factor_fresh(user: Principal, settings: Settings | None = None) -> bool:
    """Whether the user gave a second factor within ``PRESCREEN_STEP_UP_MINUTES``."""
    settings = settings or get_settings()
    if user.kind != "user" or user.mfa_at is None:
        return False
    return datetime.now(UTC) - user.mfa_at <= timedelta(minutes=settings.step_up_minutes)


def check_fresh(user: Principal) -> None:
    """Refuse a sensitive operation without a fresh second factor.

    Raises:
        StepUpRequiredError: 401 ``step_up_required``.
    """
    if not second_factor_fresh(user):
        minutes = get_settings().step_up_minutes
        raise StepUpRequiredError(
            f"this operation needs a second factor given within {minutes:g} minutes: POST /v1/auth/step-up "
            '{"totp": CODE} (enrol first at /v1/auth/totp/enroll)'
        )


def require_fresh(permission: Permission) -> Callable[..., Any]:
    """Like :func:`require_user`, for a sensitive operation: also a fresh second factor."""
    inner = require_user(permission)

    def dependency(user: Principal = Depends(inner)) -> Principal:
        check_fresh(user)
        return user

    dependency.permission = permission  # type: ignore[attr-defined]
    dependency.sensitive = True  # type: ignore[attr-defined]
    return dependency


def signed_in(user: Principal | None = Depends(caller)) -> Principal:
    """Any signed-in person, even one whose token may only enrol (the second-factor routes)."""
    if user is None or user.kind != "user":
        raise NotAuthenticatedError("sign in first: send 'Authorization: Bearer TOKEN' from /v1/auth/token")
    return user


signed_in.permission = Permission.HEALTH  # type: ignore[attr-defined]


def needs(permission: Permission) -> list[Any]:
    """``dependencies=needs(...)`` for a route that does not use the caller otherwise."""
    return [Depends(require(permission))]


Reader = Annotated[Principal, Depends(require_user(Permission.WORKLISTS_READ))]
Writer = Annotated[Principal, Depends(require_user(Permission.REPORTS_WRITE))]
StatsReader = Annotated[Principal, Depends(require_user(Permission.STATS_READ))]
SignedIn = Annotated[Principal, Depends(signed_in)]
Auditor = Annotated[Principal, Depends(require_fresh(Permission.AUDIT_READ))]
