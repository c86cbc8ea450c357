"""Authentication and permissions: tokens, the signing key, and an explicit permission on every route."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from prescreen.config import Settings, get_settings
from prescreen.errors import NotAuthenticatedError
from prescreen.serving.app import create_app
from prescreen.serving.auth import issue_token, read_token, secret_key
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.users import Principal, add_user, authenticate

USER = Principal("u1", "liwei", "Li Wei", "attending", ("cardiology",), None, False)


def test_signing_key_is_made_once_and_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    first = secret_key(settings)
    assert len(first) == 64  # 48 random bytes, URL-safe base64 without padding
    assert secret_key(settings) == first
    mode = stat.S_IMODE((tmp_path / "secret.key").stat().st_mode)
    assert mode == 0o600


def test_a_configured_key_wins_and_is_not_written(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, secret_key=SecretStr("k" * 48))
    assert secret_key(settings) == "k" * 48
    assert not (tmp_path / "secret.key").exists()


def test_token_round_trip_forgery_and_expiry(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, secret_key=SecretStr("a" * 48))
    assert read_token(issue_token(USER, settings), settings) == "u1"
    other = Settings(home=tmp_path, secret_key=SecretStr("b" * 48))
    with pytest.raises(NotAuthenticatedError, match="not valid"):
        read_token(issue_token(USER, other), settings)
    expired = jwt.encode({"sub": "u1", "exp": datetime.now(UTC) - timedelta(seconds=5)}, "a" * 48, algorithm="HS256")
    with pytest.raises(NotAuthenticatedError, match="expired"):
        read_token(expired, settings)
    with pytest.raises(NotAuthenticatedError):
        read_token("not-a-token", settings)
    unsigned = jwt.encode({"sub": "u1", "exp": datetime.now(UTC) + timedelta(hours=1)}, None, algorithm="none")
    with pytest.raises(NotAuthenticatedError):
        read_token(unsigned, settings)


def _permissions(dependant: Any) -> set[str]:
    found: set[str] = set()
    call: Callable[..., Any] | None = dependant.call
    if call is not None and hasattr(call, "permission"):
        found.add(call.permission)
    for sub in dependant.dependencies:
        found |= _permissions(sub)
    return found


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """APIRoutes, also inside included routers (FastAPI ≥ 0.16x keeps them behind a wrapper)."""
    out: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):
            out.extend(_api_routes(route.original_router.routes))
    return out


def test_every_api_route_has_an_explicit_permission() -> None:
    app = create_app()
    routes = _api_routes(app.routes)
    assert len(routes) == 50  # every API route is walked (update when adding or removing one)
    missing = [f"{sorted(r.methods)} {r.path}" for r in routes if not _permissions(r.dependant)]
    assert missing == []


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    app = create_app()
    app.state.ingestor = Ingestor(session_factory(make_engine(url)), FileBlobStore(tmp_path / "blobs"))
    add_user(
        app.state.ingestor.sessions,
        login="liwei",
        name="Li Wei",
        password="pw-attending-1",
        grade="attending",
        specialties=["cardiology"],
    )
    return TestClient(app)


WRONG_PASSWORD = {"error": "not_authenticated", "detail": "wrong login or password"}
SIGN_IN_FIRST = {
    "error": "not_authenticated",
    "detail": "sign in first: send 'Authorization: Bearer TOKEN' from /v1/auth/token",
}


def test_wrong_login_or_password_is_401_without_saying_which(client: TestClient) -> None:
    wrong_password = client.post("/v1/auth/token", data={"username": "liwei", "password": "nope-nope"})
    unknown_user = client.post("/v1/auth/token", data={"username": "nobody", "password": "pw-attending-1"})
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.json() == unknown_user.json() == WRONG_PASSWORD
    assert wrong_password.headers["www-authenticate"] == "Bearer"


def test_token_opens_the_reader_routes_and_anonymous_is_refused(client: TestClient) -> None:
    anonymous = client.get("/v1/worklists")
    assert (anonymous.status_code, anonymous.json()) == (401, SIGN_IN_FIRST)
    garbage = client.get("/v1/worklists", headers={"Authorization": "Bearer garbage"})
    invalid = {"error": "not_authenticated", "detail": "the token is not valid"}
    assert (garbage.status_code, garbage.json()) == (401, invalid)
    token = client.post("/v1/auth/token", data={"username": "liwei", "password": "pw-attending-1"}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    me = client.get("/v1/auth/me", headers=headers).json()
    assert (me["login"], me["grade"], me["specialties"]) == ("liwei", "attending", ["cardiology"])
    assert client.get("/v1/worklists/cardiology", headers=headers).status_code == 200
    refused = client.get("/v1/worklists/sonography", headers=headers)
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": "forbidden", "detail": "worklist 'sonography' is not among your specialties (cardiology)"},
    )


def test_anonymous_permissions_come_from_settings(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/v1/studies").status_code == 200  # default: senders on a trusted network may read status
    monkeypatch.setenv("PRESCREEN_ANONYMOUS_PERMISSIONS", "")
    get_settings.cache_clear()
    try:
        refused = client.get("/v1/studies")
        assert (refused.status_code, refused.json()) == (401, SIGN_IN_FIRST)
        assert client.get("/healthz").status_code == 200  # health stays open
    finally:
        get_settings.cache_clear()


def test_passwords_are_stored_as_argon2_hashes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    sessions = session_factory(make_engine(url))
    add_user(sessions, login="a.b", name="A B", password="long-enough-pw", grade="chief", specialties=["x"])
    from sqlalchemy import select

    from prescreen.store.schema_triage import User

    with sessions() as session:
        stored = session.scalars(select(User.password_hash)).one()
    assert stored.startswith("$argon2id$") and "long-enough" not in stored
    with sessions.begin() as session:
        attempt = authenticate(session, "A.B", "long-enough-pw")
    assert attempt.user is not None and attempt.user.login == "a.b"


def test_repeated_wrong_passwords_lock_the_login_for_a_while(client: TestClient) -> None:
    for _ in range(5):
        wrong = client.post("/v1/auth/token", data={"username": "liwei", "password": "guess-guess"})
        assert (wrong.status_code, wrong.json()) == (401, WRONG_PASSWORD)
    locked = client.post("/v1/auth/token", data={"username": "liwei", "password": "pw-attending-1"})
    assert locked.status_code == 429 and locked.json()["error"] == "too_many_attempts"
    # the seconds left count down from the lockout (timing): the number is matched, not fixed
    assert re.fullmatch(r"too many failed sign-ins; try again in \d+ s", locked.json()["detail"]), locked.json()
    other = client.post("/v1/auth/token", data={"username": "someone", "password": "x-x-x-x-x"})
    assert (other.status_code, other.json()) == (401, WRONG_PASSWORD)  # other logins are not affected


@pytest.mark.parametrize("name", ["my record.hea", "x" * 140 + ".dat", "rec;rm.hea"])
def test_upload_file_names_outside_the_safe_pattern_are_a_400_and_nothing_is_stored(
    client: TestClient, name: str
) -> None:
    files = [("file", ("ok.hea", b"ok 1 500 10\n")), ("file", (name, b"\x00" * 20))]
    response = client.post("/v1/studies", files=files)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid_study", "detail": "a file name must be 1-128 letters, digits, '.', '_' or '-'"},
    )
    assert client.get("/v1/studies").json()["total"] == 0


def test_logout_revokes_every_token_of_the_user(client: TestClient) -> None:
    def token() -> dict[str, str]:
        got = client.post("/v1/auth/token", data={"username": "liwei", "password": "pw-attending-1"}).json()
        return {"Authorization": f"Bearer {got['access_token']}"}

    laptop, phone = token(), token()
    assert client.get("/v1/auth/me", headers=phone).status_code == 200
    logout = client.post("/v1/auth/logout", headers=laptop)
    assert (logout.status_code, logout.content) == (204, b"")
    for headers in (laptop, phone):
        refused = client.get("/v1/auth/me", headers=headers)
        assert (refused.status_code, refused.json()) == (
            401,
            {"error": "not_authenticated", "detail": "this session was signed out; sign in again"},
        )
    assert client.get("/v1/auth/me", headers=token()).status_code == 200  # a new sign-in works
