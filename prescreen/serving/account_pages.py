"""The pages of the second factor and of the audit trail: enrolling an authenticator app
(``/ui/mfa``), the step-up dialog before a sensitive action (``/ui/step-up``), and the auditors'
search (``/ui/audit``, with a fresh second factor). The same store functions as the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from prescreen.config import get_settings
from prescreen.errors import ConflictError, NotAuthenticatedError, PrescreenError
from prescreen.security import totp
from prescreen.security.audit import AuditEvent
from prescreen.security.keys import patient_pseudonym
from prescreen.serving.audit import run_search
from prescreen.serving.auth import (
    Permission,
    actor_of,
    issue_token,
    second_factor_fresh,
)
from prescreen.serving.deps import get_ingestor
from prescreen.serving.i18n import gettext
from prescreen.serving.pages import (
    _safe_next,
    _shown,
    error_page,
    page_user,
    render,
    same_origin,
    to_login,
    with_session,
)
from prescreen.store.audit import AuditQuery
from prescreen.store.signin import confirm, enrol, step_up
from prescreen.store.users import Principal

account_pages_router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(same_origin)])
PageSignedIn = Annotated[Principal | None, Depends(page_user(Permission.HEALTH))]
PageAuditor = Annotated[Principal | None, Depends(page_user(Permission.AUDIT_READ))]


def to_step_up(next_path: str) -> RedirectResponse:
    return RedirectResponse(f"/ui/step-up?next={quote(_safe_next(next_path), safe='/')}", status_code=303)


@account_pages_router.get("/mfa")
def mfa_page(request: Request, user: PageSignedIn, next: str = "/ui/") -> Response:
    """Set up the authenticator app (the first step after the first sign-in)."""
    if user is None:
        return to_login(request)
    return _shown(render("mfa.html", user=user, next=_safe_next(next), secret=None, codes=None), request)


@account_pages_router.post("/mfa/enroll")
def mfa_enroll(request: Request, user: PageSignedIn, next: Annotated[str, Form(max_length=2048)] = "/ui/") -> Response:
    """A new secret with its QR code; replacing one already in force needs a step-up first."""
    if user is None:
        return to_login(request)
    if user.totp_enabled and not second_factor_fresh(user):
        return to_step_up("/ui/mfa")
    secret = enrol(get_ingestor(request).sessions, user)
    uri = totp.otpauth_uri(secret, user.login)
    page = render("mfa.html", user=user, next=_safe_next(next), secret=secret, qr_svg=totp.qr_svg(uri), codes=None)
    page.headers["Cache-Control"] = "no-store"
    return page


@account_pages_router.post("/mfa/confirm")
def mfa_confirm(
    request: Request,
    user: PageSignedIn,
    code: Annotated[str, Form(max_length=16)],
    next: Annotated[str, Form(max_length=2048)] = "/ui/",
) -> Response:
    """Put the secret in force with a first code; shows the recovery codes once and upgrades the
    session's cookie to a full one."""
    if user is None:
        return to_login(request)
    try:
        codes = confirm(get_ingestor(request).sessions, user, code, actor_of(request, user))
    except (NotAuthenticatedError, ConflictError) as exc:
        return error_page(request, user, exc)
    page = render("mfa.html", user=user, next=_safe_next(next), secret=None, codes=codes)
    page.headers["Cache-Control"] = "no-store"
    return with_session(request, page, issue_token(user, get_settings(), user.session_id))


@account_pages_router.get("/step-up")
def step_up_page(request: Request, user: PageSignedIn, next: str = "/ui/") -> Response:
    """The dialog before a sensitive action."""
    if user is None:
        return to_login(request)
    minutes = f"{get_settings().step_up_minutes:g}"
    return _shown(render("step_up.html", user=user, next=_safe_next(next), error=None, minutes=minutes), request)


@account_pages_router.post("/step-up")
def step_up_submit(
    request: Request,
    user: PageSignedIn,
    code: Annotated[str, Form(max_length=16)],
    next: Annotated[str, Form(max_length=2048)] = "/ui/",
) -> Response:
    """Check the code; back to ``next`` (401 and the dialog again when wrong or already used)."""
    if user is None:
        return to_login(request)
    try:
        step_up(get_ingestor(request).sessions, user, code, actor_of(request, user))
    except (NotAuthenticatedError, ConflictError) as exc:
        minutes = f"{get_settings().step_up_minutes:g}"
        message = gettext("wrong or already used code") if isinstance(exc, NotAuthenticatedError) else str(exc)
        return render("step_up.html", 401, user=user, next=_safe_next(next), error=message, minutes=minutes)
    return RedirectResponse(_safe_next(next), status_code=303)


def _moment(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:  # the form's datetime-local is the hospital's time
        moment = moment.replace(tzinfo=ZoneInfo(get_settings().timezone))
    return moment.astimezone(UTC)


@account_pages_router.get("/audit")
def audit_page(
    request: Request,
    user: PageAuditor,
    patient: str = "",
    study: str = "",
    event: str = "",
    since: str = "",
    until: str = "",
) -> Response:
    """The auditors' search: by user, patient (by pseudonym), study, event and time; newest first.
    A fresh second factor first. The search itself is recorded."""
    if user is None:
        return to_login(request)
    if not second_factor_fresh(user):
        return to_step_up(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
    who = request.query_params.get("user", "")[:128]  # "user" is also the signed-in user's name here
    query = AuditQuery(
        actor=who or None,
        study_uid=study[:64] or None,
        patient_hash=patient_pseudonym(get_settings(), patient[:64]) if patient else None,
        event=event[:32] or None,
        since=_moment(since),
        until=_moment(until),
        limit=200,
    )
    try:
        records, total = run_search(get_ingestor(request), request, user, query)
    except PrescreenError as exc:
        return error_page(request, user, exc)
    shown = {"user": who, "patient": patient, "study": study, "event": event, "since": since, "until": until}
    page = render(
        "audit.html",
        user=user,
        records=records,
        total=total,
        query=shown,
        events=[e.value for e in AuditEvent],
    )
    return _shown(page, request)
