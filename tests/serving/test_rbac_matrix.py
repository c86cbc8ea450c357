"""Access control as a whole (issue 9): an RBAC matrix over every operation of the OpenAPI schema and
every kind of caller, the usual attacks on the credentials (each refused and audited), and the audit
trail's own access rule.

The matrix's expected verdicts come from a declarative rule, never from running the app: the
permission a route's dependency names (``.permission``), whether it is sensitive (``.sensitive``),
whether it takes people only (``require_user`` / ``require_fresh`` / ``signed_in``), the caller's
permission set (:data:`ROLE_PERMISSIONS`, :data:`CLIENT_PERMISSIONS`, the anonymous setting), and the
institution / specialty scope of worklist items and studies. No caller of the matrix has given a
second factor, so every sensitive operation is a refusal. The app's answers are then checked against
the verdicts: a refusal (401/403/404) where the rule refuses, and no access refusal where it allows
(the bodies are minimal, so an allowed call may still be a 4xx of its own).

One app and database for the module (migrated SQLite, Argon2 made cheap); each test signs in its own
users, so the tests do not depend on one another's order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import jwt
import pyotp
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import get_settings
from prescreen.errors import ExplanationNotFoundError, UnknownTaskError
from prescreen.security.roles import CLIENT_PERMISSIONS, Permission, Role, permissions_of_roles
from prescreen.serving import auth as auth_module
from prescreen.serving.app import create_app
from prescreen.serving.auth import secret_key
from prescreen.serving.worklists import ACTIONS
from prescreen.store import users as users_module
from prescreen.store.audit import AuditQuery, search
from prescreen.store.blobs import FileBlobStore
from prescreen.store.clients import add_client, revoke_client
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.schema import Study
from prescreen.store.users import add_user
from tests.store.test_worklist import ecg, one_item, screen_study, triage

PASSWORD = "pw-long-enough"
CLINIC = "clinic-7"
OTHER_CLINIC = "clinic-9"
SPECIALTY = "cardiology"
TASK = "ecg-rhythm"
SECRET = "matrix-signing-key-" + "k" * 40
SKIPPED = {("POST", "/v1/auth/token"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/status")}  # public, health
SENSITIVE_ACTIONS = frozenset({"amend"})
"""Item actions that check a fresh second factor inside the route (``check_fresh``), not in a dependency;
declared here from the route's documentation ("Amending is sensitive")."""
ITEM_WRITES = frozenset(
    {
        "/v1/worklist-items/{item_id}/draft",
        "/v1/worklist-items/{item_id}/return",
        "/v1/worklist-items/{item_id}/{action}",
    }
)
"""Routes whose refusals also include the review workflow's own 403s (grade, someone else's claim)."""
CODE_ROUTES = frozenset({"/v1/auth/totp/confirm", "/v1/auth/step-up"})
"""Routes that check a code in the body: the dummy code is a 401 of its own (a wrong code)."""
ACCESS_WORDS = (
    "sign in first",
    "your role does not allow",
    "not among your specialties",
    "worklists are for readers",
    "among your institutions",
    "token",
    "signed out",
    "session",
    "api key",
)
"""What the access checks (not the workflow) say when they refuse."""
AUDITED_FAILURES = ("access-denied", "sign-in-failed", "step-up")
JSON_BODIES: dict[str, dict[str, str]] = {
    "/v1/worklist-items/{item_id}/draft": {"text": "x"},
    "/v1/worklist-items/{item_id}/return": {"comment": "x"},
    "/v1/auth/step-up": {"totp": "000000"},
    "/v1/auth/totp/confirm": {"totp": "000000"},
}
SPARE_ITEMS = ["csrf", "audit"]
"""Items for the tests after the matrix (whose uploads leave jobs in the queue that a new item would meet)."""
TRAVERSALS = ("..%2F..%2Fetc%2Fpasswd", "../../secret.key")


# --------------------------------------------------------------------------- who calls


@dataclass(frozen=True)
class Who:
    """A caller of the matrix: anonymous, a machine client, or a user with roles and a scope."""

    name: str
    kind: str = "user"  # anonymous | client | user
    roles: tuple[str, ...] = ()
    grade: str | None = None
    specialties: tuple[str, ...] = ()
    institutions: tuple[str, ...] = ()

    def permissions(self) -> frozenset[Permission]:
        if self.kind == "anonymous":
            return frozenset(Permission(p) for p in get_settings().anonymous_permissions) | {Permission.HEALTH}
        if self.kind == "client":
            return CLIENT_PERMISSIONS
        return permissions_of_roles(Role(r) for r in self.roles)

    def serves(self, institution: str) -> bool:
        return not self.institutions or institution in self.institutions


def _reader(name: str, grade: str, specialty: str = SPECIALTY, institution: str = CLINIC) -> Who:
    return Who(name, "user", ("reader",), grade, (specialty,), (institution,))


PRINCIPALS = (
    Who("anonymous", "anonymous"),
    Who("pacs.clinic7", "client", institutions=(CLINIC,)),
    _reader("sono.reader", "attending", specialty="sonography"),
    _reader("cardio.clinic9", "attending", institution=OTHER_CLINIC),
    _reader("res.cardio", "resident"),
    _reader("att.cardio", "attending"),
    _reader("assoc.cardio", "associate_chief"),
    Who("admin.one", roles=("admin",)),
    Who("secadmin.one", roles=("security_admin",)),
    Who("auditor.one", roles=("auditor",)),
    Who("ml.one", roles=("ml_engineer",)),
)


# --------------------------------------------------------------------------- the app, built once


class StartedWithoutModels:
    """A started engine with no model: the routes behind it get past the 503 "the service is starting"
    to their access checks and answer a 4xx of their own (what they read: models, store, screen,
    explanation_png, shadow_tag)."""

    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.store = None

    def screen(self, files: Any, task: Any, in_request: bool = False) -> Any:
        raise UnknownTaskError("no model in this test")

    def explanation_png(self, name: str) -> bytes:
        raise ExplanationNotFoundError(f"no explanation {name!r}")

    def shadow_tag(self, task: str) -> None:
        return None


@dataclass
class World:
    app: FastAPI
    client: TestClient
    sessions: sessionmaker[Session]
    blobs: FileBlobStore
    item_of: dict[str, str] = field(default_factory=dict)  # a cardiology item of clinic-7 per caller
    study_of: dict[str, str] = field(default_factory=dict)  # its study
    uid_of: dict[str, str] = field(default_factory=dict)  # its Study Instance UID
    client_key: str = ""  # the API key of the matrix's machine client

    def item(self, institution: str = CLINIC) -> tuple[str, str, str]:
        """A new screened ECG study of ``institution`` with its cardiology item: (item, study, uid)."""
        study_id = screen_study(self.sessions, self.blobs, ecg("af", 0.93))
        with self.sessions.begin() as s:
            s.execute(update(Study).where(Study.id == study_id).values(institution=institution))
            uid = s.get(Study, study_id).study_uid  # type: ignore[union-attr]
        assert triage(self.sessions) == 1
        item = one_item(self.sessions, study_id)
        assert item.worklist == SPECIALTY
        return item.id, study_id, uid

    def user(self, login: str, *, roles: tuple[str, ...] = ("reader",), **kwargs: Any) -> None:
        if "reader" in roles:
            kwargs.setdefault("grade", "attending")
            kwargs.setdefault("specialties", [SPECIALTY])
            kwargs.setdefault("institutions", [CLINIC])
        add_user(self.sessions, login=login, name=login.title(), password=PASSWORD, roles=list(roles), **kwargs)

    def sign_in(self, login: str, totp: str | None = None) -> httpx.Response:
        data = {"username": login, "password": PASSWORD, **({"totp": totp} if totp else {})}
        response: httpx.Response = self.client.post("/v1/auth/token", data=data)
        return response

    def bearer(self, login: str, totp: str | None = None) -> dict[str, str]:
        got = self.sign_in(login, totp)
        assert got.status_code == 200, got.text
        assert got.json().get("scope") is None, got.json()  # a full token, not an enrol-only one
        return {"Authorization": f"Bearer {got.json()['access_token']}"}

    def enrol(self, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Enrol the caller in TOTP (the session counts as stepped up): the secret and the new headers."""
        got = self.client.post("/v1/auth/totp/enroll", headers=headers)
        assert got.status_code == 200, got.text
        secret = got.json()["secret"]
        got = self.client.post("/v1/auth/totp/confirm", headers=headers, json={"totp": pyotp.TOTP(secret).now()})
        assert got.status_code == 200, got.text
        return secret, {"Authorization": f"Bearer {got.json()['access_token']}"}

    def failures(self) -> dict[str, int]:
        """Audit records of refused access, by event (outcome other than success)."""
        out = {}
        with self.sessions() as session:
            for event in AUDITED_FAILURES:
                found, _ = search(session, AuditQuery(event=event, limit=100000))
                out[event] = sum(1 for r in found if r.outcome != 0)
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("rbac")
    with pytest.MonkeyPatch.context() as mp:
        # what the module's sign-ins need, set before any test-level fixture runs; the tests set them again
        mp.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        mp.setenv("PRESCREEN_SECRET_KEY", SECRET)  # one key for the module (each test has its own home)
        mp.setenv("PRESCREEN_ANONYMOUS_PERMISSIONS", "")
        mp.setenv("PRESCREEN_MFA", "step-up")
        get_settings.cache_clear()
        url = f"sqlite:///{tmp / 'db.sqlite'}"
        migrate(url)
        app = create_app()
        app.state.engine = StartedWithoutModels()
        app.state.ingestor = Ingestor(session_factory(make_engine(url)), FileBlobStore(tmp / "blobs"))
        client = TestClient(app, follow_redirects=False)
        world = World(app, client, app.state.ingestor.sessions, app.state.ingestor.blobs)
        for name in [who.name for who in PRINCIPALS] + SPARE_ITEMS:  # made first: the matrix uploads studies too
            world.item_of[name], world.study_of[name], world.uid_of[name] = world.item()
        for who in PRINCIPALS:
            if who.kind == "user":
                world.user(
                    who.name,
                    roles=who.roles,
                    grade=who.grade,
                    specialties=list(who.specialties),
                    institutions=list(who.institutions),
                )
        world.client_key = add_client(world.sessions, name="pacs.clinic7", institution=CLINIC)[1]
        yield world
        client.close()
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def nothing_anonymous(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new default (nothing anonymous), after conftest's permissive setting for the older tests."""
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setenv("PRESCREEN_ANONYMOUS_PERMISSIONS", "")
    monkeypatch.setenv("PRESCREEN_SECRET_KEY", SECRET)
    get_settings.cache_clear()


# --------------------------------------------------------------------------- the routes and their rule


@dataclass(frozen=True)
class Rule:
    """What a route asks of its caller, read from its dependencies."""

    permission: Permission
    sensitive: bool  # a fresh second factor (``require_fresh``)
    people_only: bool  # anonymous callers are refused whatever the settings
    users_only: bool  # machine clients are refused too (``signed_in``)


def _dependencies(dependant: Any) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _dependencies(sub)


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    out: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):
            out.extend(_api_routes(route.original_router.routes))
    return out


def rule_of(route: APIRoute) -> Rule:
    guards = [d for d in _dependencies(route.dependant) if hasattr(d, "permission")]
    permissions = {Permission(d.permission) for d in guards}  # type: ignore[attr-defined]
    assert len(permissions) == 1, (route.path, permissions)
    kinds = {getattr(d, "__qualname__", "").split(".")[0] for d in guards}
    users_only = any(d is auth_module.signed_in for d in guards)
    return Rule(
        permissions.pop(),
        sensitive=any(getattr(d, "sensitive", False) for d in guards),
        people_only=users_only or bool(kinds & {"require_user", "require_fresh"}),
        users_only=users_only,
    )


@dataclass(frozen=True)
class Op:
    method: str
    template: str
    rule: Rule
    action: str | None = None  # the value of {action}, where the route has one
    body: str | None = None  # the request body's content type

    def __str__(self) -> str:
        return f"{self.method} {self.template.replace('{action}', self.action or '{action}')}"


def operations(app: FastAPI) -> list[Op]:
    """Every operation of the schema, {action} once per action, sign-out last (it ends the session)."""
    routes = {(m, r.path): r for r in _api_routes(app.routes) for m in r.methods or ()}
    ops: list[Op] = []
    for path, methods in app.openapi()["paths"].items():
        for method, spec in methods.items():
            key = (method.upper(), path)
            if key in SKIPPED:
                continue
            content = next(iter(spec.get("requestBody", {}).get("content", {})), None)
            rule = rule_of(routes[key])
            for action in ACTIONS if "{action}" in path else (None,):
                ops.append(Op(key[0], path, rule, action, content))
    return sorted(ops, key=lambda op: op.template == "/v1/auth/logout")


def fill(op: Op, world: World, who: str, override: dict[str, str] | None = None) -> str:
    values = {
        "item_id": world.item_of[who],
        "study_id": world.study_of[who],
        "study_uid": world.uid_of[who],
        "specialty": SPECIALTY,
        "task": TASK,
        "action": op.action or "claim",
        "name": "dummy",
        "version": "1",
        **(override or {}),
    }
    path = op.template
    for name in [p.split("}")[0] for p in path.split("{")[1:]]:
        path = path.replace("{" + name + "}", values.get(name, "dummy"))
    return path


def send(world: World, op: Op, path: str, headers: dict[str, str]) -> httpx.Response:
    kwargs: dict[str, Any] = {}
    if op.body == "application/json" and op.template in JSON_BODIES:
        kwargs["json"] = JSON_BODIES[op.template]
    elif op.body == "multipart/form-data":
        kwargs["files"] = [("file", ("rec.hea", b"rec 1 500 10\n"))]
    elif op.body == "multipart/related":
        headers = {**headers, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
        kwargs["content"] = b"--b--\r\n"
    response: httpx.Response = world.client.request(op.method, path, headers=headers, **kwargs)
    return response


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    why: str


def expected(op: Op, who: Who) -> Verdict:
    """The declarative rule: who may call what, on which objects."""
    rule = op.rule
    if who.kind == "anonymous" and (rule.people_only or rule.permission not in who.permissions()):
        return Verdict(False, "anonymous")
    if who.kind == "client" and rule.users_only:
        return Verdict(False, "people only")
    if rule.permission not in who.permissions():
        return Verdict(False, f"lacks {rule.permission.value}")
    if rule.sensitive or op.action in SENSITIVE_ACTIONS:
        return Verdict(False, "sensitive, no fresh second factor")
    if "{item_id}" in op.template:
        if SPECIALTY not in who.specialties:
            return Verdict(False, "item of another specialty")
        if not who.serves(CLINIC):
            return Verdict(False, "item of another institution")
    if op.template == "/v1/worklists/{specialty}" and SPECIALTY not in who.specialties:
        return Verdict(False, "worklist of another specialty")
    if "{study_id}" in op.template and not who.serves(CLINIC):
        return Verdict(False, "study of another institution")
    return Verdict(True, "allowed")


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "", response.text[:120]
    if not isinstance(body, dict):
        return "", str(body)[:120]
    return str(body.get("error", "")), str(body.get("detail", ""))


def is_access_refusal(op: Op, response: httpx.Response) -> bool:
    """A 401/403 (or an item's "not among your institutions" 404) that the access checks gave, not the
    workflow or a wrong code in the body."""
    status = response.status_code
    error, detail = _error(response)
    words = any(w in detail.lower() for w in ACCESS_WORDS)
    if status == 404:
        return "among your institutions" in detail
    if status not in (401, 403):
        return False
    if error == "step_up_required":
        return True
    if op.template in ITEM_WRITES and status == 403:
        return words
    if op.template in CODE_ROUTES and status == 401:
        return words
    return True


def headers_of(world: World, who: Who) -> dict[str, str]:
    if who.kind == "anonymous":
        return {}
    if who.kind == "client":
        return {"Authorization": f"Bearer {world.client_key}"}
    return world.bearer(who.name)


# --------------------------------------------------------------------------- 1. the matrix


def test_the_rbac_matrix_over_every_operation_and_caller(world: World) -> None:
    ops = operations(world.app)
    assert len(ops) >= 28  # every operation of the schema but the public ones, {action} once per action
    assert all(op.rule.permission in Permission for op in ops)
    violations: list[str] = []
    refusals = allowed = 0
    for who in PRINCIPALS:
        headers = headers_of(world, who)
        for op in ops:
            verdict = expected(op, who)
            response = send(world, op, fill(op, world, who.name), headers)
            status = response.status_code
            error, detail = _error(response)
            seen = f"{status} {error}: {detail[:100]}"
            if not verdict.allowed:
                refusals += 1
                if status < 400:
                    violations.append(f"SUCCESS where refused ({verdict.why}): {who.name} {op} -> {seen}")
                elif status not in (401, 403, 404):
                    violations.append(f"not a refusal ({verdict.why}): {who.name} {op} -> {seen}")
            else:
                allowed += 1
                if is_access_refusal(op, response) or status >= 500:
                    violations.append(f"refused where allowed: {who.name} {op} -> {seen}")
    assert refusals > 0 and allowed > 0
    assert violations == [], f"{len(violations)} of {len(ops) * len(PRINCIPALS)} calls:\n" + "\n".join(violations)


def test_the_rule_reads_the_dependencies(world: World) -> None:
    """A sanity check of the rule itself, so that a broken walker cannot make the matrix vacuous."""
    by_route = {(op.method, op.template): op.rule for op in operations(world.app)}
    assert by_route[("GET", "/v1/audit")] == Rule(Permission.AUDIT_READ, True, True, False)
    assert by_route[("GET", "/v1/auth/me")] == Rule(Permission.HEALTH, False, True, True)
    assert by_route[("GET", "/v1/worklists")] == Rule(Permission.WORKLISTS_READ, False, True, False)
    assert by_route[("POST", "/v1/studies")] == Rule(Permission.INGEST, False, False, False)
    anonymous, attending = PRINCIPALS[0], PRINCIPALS[5]
    ops = operations(world.app)
    assert not any(expected(op, anonymous).allowed for op in ops)  # nothing anonymous
    allowed = {str(op) for op in ops if expected(op, attending).allowed}
    assert "POST /v1/worklist-items/{item_id}/claim" in allowed
    assert "POST /v1/worklist-items/{item_id}/amend" not in allowed
    assert "GET /v1/audit" not in allowed


# --------------------------------------------------------------------------- 2. attacks


def _claims_of(headers: dict[str, str]) -> dict[str, Any]:
    token = headers["Authorization"].removeprefix("Bearer ")
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _refused_and_audited(
    world: World, event: str, call: Callable[[], httpx.Response], status: int = 401
) -> httpx.Response:
    before = world.failures()
    response = call()
    assert response.status_code == status, (response.status_code, response.text)
    after = world.failures()
    assert after[event] > before[event], (event, before, after)
    return response


def test_forged_expired_unsigned_and_signed_out_tokens_are_refused_and_audited(world: World) -> None:
    world.user("tok.victim")
    good = world.bearer("tok.victim")
    assert world.client.get("/v1/worklists", headers=good).status_code == 200
    claims = _claims_of(good)
    later = datetime.now(UTC) + timedelta(hours=1)

    def call(token: str) -> Callable[[], httpx.Response]:
        return lambda: world.client.get("/v1/worklists", headers={"Authorization": f"Bearer {token}"})

    forged = jwt.encode({**claims, "exp": later}, "another-key-" + "x" * 40, algorithm="HS256")
    expired = jwt.encode(
        {**claims, "exp": datetime.now(UTC) - timedelta(seconds=5)}, secret_key(get_settings()), algorithm="HS256"
    )
    unsigned = jwt.encode({**claims, "exp": later}, key=None, algorithm="none")  # type: ignore[arg-type]
    assert unsigned.endswith(".")  # header.payload. with an empty signature
    for token, says in ((forged, "not valid"), (expired, "expired"), (unsigned, "not valid")):
        response = _refused_and_audited(world, "access-denied", call(token))
        assert says in response.json()["detail"]

    assert world.client.post("/v1/auth/logout", headers=good).status_code == 204
    response = _refused_and_audited(world, "access-denied", lambda: world.client.get("/v1/worklists", headers=good))
    assert "sign in again" in response.json()["detail"]


def test_a_revoked_client_key_is_refused_and_audited(world: World) -> None:
    _, key = add_client(world.sessions, name="pacs.revoked", institution=CLINIC)
    headers = {"Authorization": f"Bearer {key}"}
    assert world.client.get("/v1/studies", headers=headers).status_code == 200
    with world.sessions.begin() as session:
        revoke_client(session, "pacs.revoked")
    response = _refused_and_audited(world, "access-denied", lambda: world.client.get("/v1/studies", headers=headers))
    assert response.json()["detail"] == "the API key is not valid (unknown or revoked)"


def test_a_replayed_totp_code_at_step_up_is_refused_and_audited(world: World) -> None:
    world.user("stepup.replay")
    secret, headers = world.enrol(world.bearer("stepup.replay"))
    # a code of the next 30-second step (accepted: clock drift), spent on a step-up of this session
    code = pyotp.TOTP(secret).at(datetime.now(UTC) + timedelta(seconds=30))
    first = world.client.post("/v1/auth/step-up", headers=headers, json={"totp": code})
    assert first.status_code == 200, first.text
    fresh_session = world.bearer("stepup.replay")  # a new sign-in: a new session
    before = world.failures()
    replay = world.client.post("/v1/auth/step-up", headers=fresh_session, json={"totp": code})
    assert (replay.status_code, replay.json()["detail"]) == (401, "wrong or already used second-factor code")
    assert world.failures()["step-up"] == before["step-up"] + 1
    # nor may that session replace the second factor in force (re-enrol) without a fresh one
    response = _refused_and_audited(
        world, "access-denied", lambda: world.client.post("/v1/auth/totp/enroll", headers=fresh_session)
    )
    assert response.json()["error"] == "step_up_required"


def test_a_replayed_totp_code_at_sign_in_is_refused_and_audited(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.user("login.replay")
    secret, _ = world.enrol(world.bearer("login.replay"))
    monkeypatch.setenv("PRESCREEN_MFA", "login")
    get_settings.cache_clear()
    assert world.sign_in("login.replay").json()["error"] == "mfa_required"
    code = pyotp.TOTP(secret).now()
    assert world.sign_in("login.replay", code).status_code == 200
    response = _refused_and_audited(world, "sign-in-failed", lambda: world.sign_in("login.replay", code))
    assert response.json()["detail"] == "wrong or already used second-factor code"


def test_a_cross_site_form_post_to_the_pages_is_refused_and_audited(world: World) -> None:
    evil = {"Origin": "http://evil.example"}
    item = world.item_of["csrf"]
    response = _refused_and_audited(
        world, "access-denied", lambda: world.client.post(f"/ui/items/{item}/claim", headers=evil), status=403
    )
    assert "another site" in response.json()["detail"]
    response = world.client.post("/ui/login", headers=evil, data={"login": "x", "password": "y"})
    assert response.status_code == 403 and "another site" in response.json()["detail"]
    referer = world.client.post("/ui/logout", headers={"Referer": "http://evil.example/page"})
    assert referer.status_code == 403


def test_a_cross_site_login_post_is_audited(world: World) -> None:
    _refused_and_audited(
        world,
        "access-denied",
        lambda: world.client.post(
            "/ui/login", headers={"Origin": "http://evil.example"}, data={"login": "x", "password": "y"}
        ),
        status=403,
    )


def raw_call(app: FastAPI, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Call the app with ``path`` exactly as given, dot segments and all (as ``curl --path-as-is`` sends
    it; httpx would resolve ``../`` before sending), the way a server hands it to the app."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send_message(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send_message))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_path_traversal_in_every_path_parameter_is_never_served(world: World) -> None:
    world.user("trav.reader")
    _, key = add_client(world.sessions, name="pacs.trav", institution=CLINIC)
    callers = {
        "anonymous": {},
        "trav.reader": world.bearer("trav.reader"),
        "client": {"Authorization": f"Bearer {key}"},
    }
    ops = [op for op in operations(world.app) if "{" in op.template and op.template != "/v1/auth/logout"]
    assert ops
    bad: list[str] = []
    tried = 0
    for op in ops:
        params = [p.split("}")[0] for p in op.template.split("{")[1:]]
        for param in params:
            for evil in TRAVERSALS:
                path = fill(op, world, "att.cardio", {param: evil})
                for name, headers in callers.items():
                    tried += 1
                    if "../" in evil:
                        status, body = raw_call(world.app, op.method, path, headers)
                    else:
                        response = send(world, op, path, headers)
                        status, body = response.status_code, response.content
                    if status < 400 or status >= 500:
                        bad.append(f"{name} {op.method} {path} -> {status} {body[:100]!r}")
    assert tried >= len(ops) * 2 * 3
    assert bad == [], "\n".join(bad)


# --------------------------------------------------------------------------- 3. the audit trail's own rule


def test_the_audit_trail_needs_an_auditor_with_a_fresh_second_factor(world: World) -> None:
    world.user("audit.subject")
    world.user("audit.keeper", roles=("auditor",))
    item = world.item_of["audit"]
    reader = world.bearer("audit.subject")
    assert world.client.get(f"/v1/worklist-items/{item}", headers=reader).status_code == 200

    refused = world.client.get("/v1/audit", headers=reader)
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")

    auditor = world.bearer("audit.keeper")
    stale = world.client.get("/v1/audit", headers=auditor)
    assert (stale.status_code, stale.json()["error"]) == (401, "step_up_required")

    _, fresh = world.enrol(auditor)
    page = world.client.get("/v1/audit", headers=fresh, params={"user": "audit.subject", "event": "item-read"})
    assert page.status_code == 200, page.text
    reads = page.json()["items"]
    assert [(r["event"], r["actor"], r["object_id"]) for r in reads] == [("item-read", "audit.subject", item)]
    assert reads[0]["patient_hash"] and reads[0]["study_uid"]
    everything = world.client.get("/v1/audit", headers=fresh, params={"event": "audit-read"})
    assert everything.status_code == 200 and everything.json()["total"] >= 1  # the search itself is recorded
