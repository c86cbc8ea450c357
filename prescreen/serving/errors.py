"""Errors at the HTTP edge: every error answer is JSON ``{"error", "detail"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prescreen.errors import (
    ConflictError,
    ExplanationNotFoundError,
    ForbiddenError,
    InvalidRequestError,
    InvalidStudyError,
    MfaRequiredError,
    ModelError,
    NotAssessableError,
    NotAuthenticatedError,
    NotFoundError,
    PrescreenError,
    ServiceUnavailableError,
    StepUpRequiredError,
    StudyTooLargeError,
    TooManyAttemptsError,
    UnknownTaskError,
    UnsupportedMediaTypeError,
    UnsupportedStudyError,
)

log = logging.getLogger(__name__)


RETRY_AFTER_SECONDS = 5


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail})


# most specific first (the first match wins): StudyTooLarge, UnsupportedStudy and UnsupportedMediaType are
# InvalidStudy errors too
STATUS_BY_ERROR: tuple[tuple[type[PrescreenError], int, str], ...] = (
    (ExplanationNotFoundError, 404, "not_found"),
    (NotFoundError, 404, "not_found"),
    (MfaRequiredError, 401, "mfa_required"),
    (StepUpRequiredError, 401, "step_up_required"),
    (NotAuthenticatedError, 401, "not_authenticated"),
    (ForbiddenError, 403, "forbidden"),
    (ConflictError, 409, "conflict"),
    (TooManyAttemptsError, 429, "too_many_attempts"),
    (StudyTooLargeError, 413, "too_large"),
    (UnsupportedStudyError, 422, "unsupported_study"),
    (NotAssessableError, 422, "not_assessable"),
    (UnsupportedMediaTypeError, 415, "unsupported_media_type"),
    (InvalidStudyError, 400, "invalid_study"),
    (UnknownTaskError, 400, "unknown_task"),
    (InvalidRequestError, 400, "invalid_request"),
    (ServiceUnavailableError, 503, "unavailable"),
    (ModelError, 503, "model_unavailable"),
)


def status_for(exc: PrescreenError) -> tuple[int, str]:
    """HTTP status and error code for a prescreen error."""
    return next(
        ((status, code) for kind, status, code in STATUS_BY_ERROR if isinstance(exc, kind)), (400, "bad_request")
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PrescreenError)
    async def _prescreen(request: Request, exc: PrescreenError) -> JSONResponse:
        status, code = status_for(exc)
        if status in (401, 403, 404) and not (status == 401 and request.url.path in SIGN_IN_PATHS):
            await run_in_threadpool(audit_refusal, request, status, code)
        response = error_response(status, code, str(exc))
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error while handling a request: %s", type(exc).__name__)
        return error_response(500, "internal_error", "the service failed on this request; it keeps serving")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, PrescreenError):  # e.g. the upload limit hit while parsing the form
            status, error = status_for(exc.__cause__)
            return error_response(status, error, str(exc.__cause__))
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}
        response = error_response(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route matched
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response


SIGN_IN_PATHS = frozenset({"/v1/auth/token", "/ui/login"})
"""A wrong password or code there is recorded by the sign-in itself, with its reason (a cross-site
post to the form, refused before the sign-in runs, is recorded here)."""


def audit_refusal(request: Request, status: int, code: str) -> None:
    """Record a refused call (401, 403; a 404 only when someone was signed in, which is how an item
    outside one's institutions answers): who, from where, which route, why. The route's template
    is recorded, never the raw path (it may carry identifiers)."""
    from prescreen.security.audit import Actor, ActorKind, AuditEntry, AuditEvent, Outcome
    from prescreen.store.audit import record_now

    principal = getattr(request.state, "principal", None)
    if status == 404 and principal is None:
        return
    ingestor = getattr(request.app.state, "ingestor", None)
    if ingestor is None:
        return
    address = request.client.host if request.client else None
    if principal is None:
        actor = Actor(ActorKind.ANONYMOUS, "anonymous", address)
    else:
        kind = ActorKind.CLIENT if principal.kind == "client" else ActorKind.USER
        actor = Actor(kind, principal.login, address)
    route = request.scope.get("route")
    detail = {"method": request.method, "route": getattr(route, "path", "?"), "status": status, "error": code}
    try:
        record_now(ingestor.sessions, AuditEntry(AuditEvent.ACCESS_DENIED, actor, Outcome.MINOR_FAILURE, detail=detail))
    except Exception as exc:  # a refusal is answered even when the trail cannot be written
        log.error("could not record a refused call in the audit trail: %s", type(exc).__name__)


def allowed_methods(request: Request) -> list[str]:
    """The methods the routes of this request's path take (for a 405's ``Allow``, RFC 9110)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


class CatchAll:
    """Answer an unexpected error with a JSON 500 and log only its type: Starlette would re-raise
    it to the server, which logs the whole message and traceback (that may quote patient data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception as exc:
            log.error("unexpected error while handling a request: %s", type(exc).__name__)
            if not started:
                response = error_response(500, "internal_error", "the service failed on this request; it keeps serving")
                await response(scope, receive, send)
