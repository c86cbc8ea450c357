"""Who is calling, and may they: OAuth2 password flow (bearer JWT) for the API, the same token in
an HttpOnly session cookie for the pages, and one explicit permission on every route.

Permissions are granted by role: every active reader has the reading permissions; admins also
manage users. Routes that senders (PACS, modalities, edge nodes) use can be opened to anonymous
callers with ``PRESCREEN_ANONYMOUS_PERMISSIONS`` (default: screening, ingest and study status, for
a trusted network; set it empty to require a token everywhere).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from prescreen.config import Settings, get_settings
from prescreen.errors import ForbiddenError, NotAuthenticatedError
from prescreen.store.users import Principal, get_principal

SESSION_COOKIE = "prescreen_session"
ALGORITHM = "HS256"


class Permission(StrEnum):
    HEALTH = "health"
    SCREEN = "screen"
    INGEST = "ingest"
    STUDIES_READ = "studies:read"
    MODELS_READ = "models:read"
    WORKLISTS_READ = "worklists:read"
    REPORTS_WRITE = "reports:write"
    STATS_READ = "stats:read"
    USERS_ADMIN = "users:admin"


READER_PERMISSIONS = frozenset(Permission) - {Permission.USERS_ADMIN}


def permissions_of(user: Principal) -> frozenset[Permission]:
    return frozenset(Permission) if user.is_admin else READER_PERMISSIONS


def secret_key(settings: Settings) -> str:
    """The token signing key: ``PRESCREEN_SECRET_KEY``, else one made once and kept (mode 0600)
    in ``$PRESCREEN_HOME/secret.key``. Never in the code."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path = settings.home / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole to a private temp file, then linked into place: a concurrent start or a
        # crash never leaves an empty or half-written key, and the first writer wins
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            os.unlink(temp)
    key = path.read_text().strip()
    if len(key) < 32:
        raise NotAuthenticatedError(f"the signing key in {path} is too short; delete it to make a new one")
    return key


def issue_token(user: Principal, settings: Settings) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": user.id,
        "ver": user.token_version,
        "iat": now,
        "exp": now + timedelta(minutes=settings.token_ttl_minutes),
    }
    return jwt.encode(claims, secret_key(settings), algorithm=ALGORITHM)


def read_token(token: str, settings: Settings) -> str:
    """The user id a token was issued to (see :func:`read_token_version` for its version).

    Raises:
        NotAuthenticatedError: a token that is malformed, forged or expired.
    """
    try:
        claims = jwt.decode(token, secret_key(settings), algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise NotAuthenticatedError("the token has expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise NotAuthenticatedError("the token is not valid") from None
    return str(claims["sub"])


def read_token_version(token: str, settings: Settings) -> int:
    """The user's token version the token was issued with (0 for a token without one)."""
    claims = jwt.decode(token, secret_key(settings), algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    return int(claims.get("ver", 0))


_bearer = OAuth2PasswordBearer(tokenUrl="/v1/auth/token", auto_error=False)


def caller(request: Request, token: Annotated[str | None, Depends(_bearer)]) -> Principal | None:
    """The signed-in user, or ``None`` for an anonymous call. The ``/v1`` API takes bearer tokens
    only; the session cookie counts for the pages (``/ui``), whose forms are checked for their origin:
    a cookie alone, sent by a browser from another site, opens no API route."""
    cookie = None if token or not request.url.path.startswith("/ui/") else request.cookies.get(SESSION_COOKIE)
    if not token and not cookie:
        return None
    sessions = getattr(request.app.state, "ingestor", None)
    if sessions is None:
        raise NotAuthenticatedError("the service is starting")
    try:
        raw = token or cookie or ""
        settings = get_settings()
        user_id = read_token(raw, settings)
        return get_principal(sessions.sessions, user_id, read_token_version(raw, settings))
    except NotAuthenticatedError:
        if token:
            raise  # a bad bearer token is an error; a stale page cookie is just no session
        return None


def require(permission: Permission) -> Callable[..., Any]:
    """A dependency that lets a call through only with ``permission``: returns the user, or
    ``None`` for an anonymous caller where anonymous callers hold that permission."""

    # defaults, not Annotated: these closures' annotations are strings that FastAPI resolves in the
    # module's globals, where the local ``inner`` does not exist
    def dependency(user: Principal | None = Depends(caller)) -> Principal | None:
        if user is None:
            if permission == Permission.HEALTH or permission in get_settings().anonymous_permissions:
                return None
            raise NotAuthenticatedError("sign in first: send 'Authorization: Bearer TOKEN' from /v1/auth/token")
        if permission not in permissions_of(user):
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


def needs(permission: Permission) -> list[Any]:
    """``dependencies=needs(...)`` for a route that does not use the caller otherwise."""
    return [Depends(require(permission))]


Reader = Annotated[Principal, Depends(require_user(Permission.WORKLISTS_READ))]
Writer = Annotated[Principal, Depends(require_user(Permission.REPORTS_WRITE))]
StatsReader = Annotated[Principal, Depends(require_user(Permission.STATS_READ))]
