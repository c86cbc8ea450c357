"""The readers' pages (``/ui``): sign in, the worklists of one's specialties, an item with its images
or ECG trace, its reports and the review actions. Server-rendered (Jinja2) with a little plain
JavaScript (countdowns, a list refresh every 15 s); nothing is built or downloaded.

Sessions: ``POST /ui/login`` puts a token from :func:`~prescreen.serving.auth.issue_token` in the
HttpOnly, ``SameSite=Strict`` cookie :data:`~prescreen.serving.auth.SESSION_COOKIE` (``Secure`` when
served over HTTPS); no token is ever visible to JavaScript. A page without a valid session redirects
to the login form (and comes back afterwards).

CSRF: every action is a ``POST`` of a form to this origin and the session cookie is
``SameSite=Strict``, so a browser never sends it with a request started by another site; no ``GET``
changes anything but the reader's choice of language (``/ui/locale/{code}``, a cookie). Pages also
send a Content-Security-Policy that allows only this origin's scripts and styles (no inline script),
and forbid framing.

Every route carries one explicit permission (a dependency with a ``permission`` attribute, as
:func:`~prescreen.serving.auth.require` marks them): ``health`` for the public ones (login form,
stylesheet and script), ``worklists:read`` to see, ``reports:write`` to act.

Language: Simplified Chinese by default, English on request; every word on a page goes through the
catalogues of :mod:`prescreen.serving.i18n` (see there how to mark and translate a string).

Nothing patient-identifying is logged here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from typing_extensions import TypedDict  # like the store's rows

from prescreen.config import get_settings
from prescreen.errors import (
    ForbiddenError,
    InvalidRequestError,
    InvalidStudyError,
    MfaRequiredError,
    NotAuthenticatedError,
    NotFoundError,
    PrescreenError,
    TooManyAttemptsError,
)
from prescreen.security.audit import AuditEvent
from prescreen.serving.auth import (
    ENROL_ONLY,
    SESSION_COOKIE,
    Permission,
    actor_of,
    caller,
    issue_token,
    second_factor_fresh,
)
from prescreen.serving.deps import claim_lease, get_ingestor, get_targets
from prescreen.serving.errors import status_for
from prescreen.serving.holter_report import draft_for
from prescreen.serving.i18n import (
    LOCALE_COOKIE,
    LOCALE_COOKIE_MAX_AGE,
    N_,
    Locale,
    bind_locale,
    current,
    gettext,
    install,
    parse_locale,
)
from prescreen.serving.previews import SeriesFile, clock, placeholder_png, series_png
from prescreen.serving.schemas import WorklistPage
from prescreen.store.audit import record_study_access
from prescreen.store.ingest import Ingestor
from prescreen.store.queue import as_utc
from prescreen.store.reading import DraftText, act, item_detail, latest_report
from prescreen.store.signin import sign_in, sign_out
from prescreen.store.users import Principal, user_names
from prescreen.store.views import preview_files, study_detail
from prescreen.store.worklist import ItemSummary, check_access, count_open, list_worklist, load_item


def same_origin(request: Request) -> None:
    """Refuse a state-changing form posted from another site (CSRF): the browser's ``Origin`` (or,
    without it, ``Referer``) must name this host. SameSite=Strict alone does not cover a page on
    another port of the same host. Callers that send neither (not a browser) carry no ambient
    cookie risk and pass.

    Raises:
        ForbiddenError: a cross-origin POST.
    """
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return
    origin = urlsplit(source)
    if source == "null" or (origin.scheme, origin.netloc) != (request.url.scheme, request.url.netloc):
        raise ForbiddenError("a form posted from another site is refused (cross-site request)")


pages_router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(same_origin)])

FLASH_COOKIE = "prescreen_flash"
LIST_LIMIT = 100
ACTIONS = ("claim", "release", "draft", "sign", "return", "amend")
STATIC = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
STATE_LABELS = {
    "unread": N_("Unread"),
    "claimed": N_("Claimed"),
    "draft": N_("Draft"),
    "awaiting_review": N_("Awaiting review"),
    "returned": N_("Returned"),
    "final": N_("Final"),
}
CODE_LABELS = {
    # priorities
    "stat": N_("Stat"),
    "urgent": N_("Urgent"),
    "routine": N_("Routine"),
    # grades of readers
    "resident": N_("Resident"),
    "attending": N_("Attending"),
    "associate_chief": N_("Associate chief"),
    "chief": N_("Chief"),
    # the shipped worklists (specialties)
    "cardiology": N_("Cardiology"),
    "sonography": N_("Sonography"),
    "general-radiology": N_("General radiology"),
    "thoracic-radiology": N_("Thoracic radiology"),
    "ecg-repeat": N_("ECG repeat"),
    # reports and their signatures
    "submitted": N_("Submitted"),
    "final": N_("Final"),
    "superseded": N_("Superseded"),
    "draft": N_("Draft"),
    "cosigned": N_("Co-signed"),
    # a series' screening
    "received": N_("Waiting to be screened"),
    "screening": N_("Screening"),
    "screened": N_("Screened"),
    "unscreenable": N_("Unscreenable"),
    "failed": N_("Failed"),
}
"""Codes the pages show in words (``label`` filter); any other code is shown capitalized, untranslated."""
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- who is signed in ----------------------------------------------------------------------


def page_user(permission: Permission) -> Callable[[Request], Principal | None]:
    """A dependency: the user of the session cookie, or ``None`` when there is no valid session
    (the route then redirects to the login form). A signed-in user without ``permission`` gets 403.
    The page is rendered in the request's language (:func:`~prescreen.serving.i18n.bind_locale`)."""

    # a default, not Annotated: this closure's annotations are strings resolved in the module's globals
    def dependency(request: Request, locale: Locale = Depends(bind_locale)) -> Principal | None:
        if not request.cookies.get(SESSION_COOKIE):
            return None
        get_ingestor(request)  # 503 while the store is not open, rather than "sign in again"
        try:
            user = caller(request, None)  # the cookie only: pages never take a bearer token
        except NotAuthenticatedError:  # expired, forged, or the user is gone
            return None
        if user is not None and not user.can(permission):
            raise ForbiddenError(f"your role does not allow {permission.value}")
        return user

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the route audit test
    return dependency


def public_page(locale: Locale = Depends(bind_locale)) -> None:
    """The login form and the static files: open to anyone, without looking at the session."""


public_page.permission = Permission.HEALTH  # type: ignore[attr-defined]

PageReader = Annotated[Principal | None, Depends(page_user(Permission.WORKLISTS_READ))]
PageWriter = Annotated[Principal | None, Depends(page_user(Permission.REPORTS_WRITE))]
Public = [Depends(public_page)]


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a page of ours only (no open redirect)."""
    if target and target.startswith("/ui/") and "//" not in target and "\\" not in target:
        return target
    return "/ui/"


def to_login(request: Request) -> RedirectResponse:
    """Redirect to the login form, coming back here afterwards; drops a stale session cookie."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"/ui/login?next={quote(_safe_next(target), safe='/')}", status_code=303)
    if request.cookies.get(SESSION_COOKIE):
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# --- rendering -----------------------------------------------------------------------------


def _iso(value: str | datetime | None) -> str:
    """A moment as ISO 8601 in UTC, for a ``<time datetime>`` attribute (the script reads it)."""
    if value is None or value == "":
        return ""
    return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value).isoformat()


def _duration(seconds: int | float | None) -> str:
    if seconds is None:
        return "—"
    text = clock(abs(int(seconds)))
    return f"−{text}" if seconds < 0 else text


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _person(name: str | None) -> str:
    """A DICOM person name (``Family^Given^Middle``, in up to three ``=`` groups: alphabetic,
    ideographic, phonetic) as ``Family, Given Middle``; a name in CJK characters as family and given
    name run together (``王小明``). The Chinese pages show the ideographic group when there is one."""
    if not name:
        return "—"
    groups = name.split("=")
    ideographic = groups[1] if len(groups) > 1 and groups[1].strip("^ ") else ""
    chosen = groups[0] if groups[0].strip("^ ") else ideographic
    if ideographic and current().locale == Locale.ZH_CN:
        chosen = ideographic
    parts = [p.strip() for p in chosen.split("^")]
    family, given = parts[0], " ".join(p for p in parts[1:] if p)
    if _CJK.search(family + given):
        return family + given or "—"
    return f"{family}, {given}" if family and given else family or given or "—"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


_SIGN_EVENTS = {"awaiting_review": N_("Signed, submitted for review"), "final": N_("Co-signed")}
_EVENTS = {
    "claim": N_("Claimed"),
    "release": N_("Released"),
    "draft": N_("Saved draft"),
    "return": N_("Returned"),
    "amend": N_("Amended"),
}


def _event(action: str, state: str) -> str:
    """An entry of an item's history in words."""
    if action == "sign":
        signed = _SIGN_EVENTS.get(state) or N_("Signed")  # (not nested in gettext: the extractor skips those)
        return gettext(signed)
    return gettext(_EVENTS[action]) if action in _EVENTS else action


def _title(value: str | None) -> str:
    return (value or "—").replace("-", " ").replace("_", " ").capitalize()


def _label(value: str | None) -> str:
    """A code (priority, grade, worklist, status) in words of the page's language."""
    return gettext(CODE_LABELS[value]) if value in CODE_LABELS else _title(value)


def _state_label(value: str) -> str:
    return gettext(STATE_LABELS[value]) if value in STATE_LABELS else _title(value)


def _environment(locale: Locale) -> Environment:
    """The templates in one language: built once per language, then only read (thread-safe)."""
    env = Environment(
        loader=PackageLoader("prescreen.serving", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    install(env, locale)
    env.filters.update(
        iso=_iso,
        duration=_duration,
        clock=clock,
        person=_person,
        score=_score,
        title=_title,
        label=_label,
        event=_event,
        state_label=_state_label,
    )
    return env


_ENVIRONMENTS = {locale: _environment(locale) for locale in Locale}


def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page in the language of the request (see :mod:`prescreen.serving.i18n`); the template also
    gets ``page`` (its language and own address, for ``<html lang>`` and the language switch) and
    ``timezone`` (the hospital's, for the script's local times)."""
    page = current()
    template = _ENVIRONMENTS[page.locale].get_template(name)
    html = template.render(page=page, timezone=get_settings().timezone, **context)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def error_page(request: Request, user: Principal | None, exc: PrescreenError) -> HTMLResponse:
    status, _code = status_for(exc)
    titles = {403: N_("Not allowed"), 404: N_("Not found"), 409: N_("Not possible now")}
    heading = titles.get(status) or N_("Something went wrong")
    response = render(
        "error.html",
        status_code=status,
        user=user,
        status=status,
        heading=gettext(heading),
        message=str(exc),
        flash=_pop_flash(request),
    )
    return _shown(response, request)


def _pop_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode()).decode())
        return {"kind": str(value["kind"]), "text": str(value["text"])[:500]}
    except (ValueError, KeyError, TypeError):
        return None


def _with_flash(response: Response, kind: str, text: str) -> Response:
    payload = base64.urlsafe_b64encode(json.dumps({"kind": kind, "text": text[:500]}).encode()).decode()
    response.set_cookie(FLASH_COOKIE, payload, max_age=60, path="/ui/", httponly=True, samesite="strict")
    return response


def _shown(response: HTMLResponse, request: Request) -> HTMLResponse:
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path="/ui/", httponly=True, samesite="strict")
    return response


# --- public: sign in and out, static files -------------------------------------------------


@pages_router.get("/login", dependencies=Public)
def login_form(request: Request, next: str = "/ui/") -> Response:
    """The login form."""
    return render("login.html", next=_safe_next(next), error=None, login="")


@pages_router.post("/login", dependencies=Public)
def login(
    request: Request,
    login: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    totp: Annotated[str, Form(max_length=16)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/ui/",
) -> Response:
    """Check the login, the password and (once enrolled, with ``PRESCREEN_MFA=login``) the TOTP
    code; set the session cookie and go on (401 and the form again when wrong, without saying which
    part). A user who must enrol a second factor first goes to ``/ui/mfa``."""
    ingestor = get_ingestor(request)
    settings = get_settings()
    address = request.client.host if request.client else None
    try:
        done = sign_in(ingestor.sessions, login, password, totp.strip() or None, address, settings.mfa)
    except MfaRequiredError:
        error = gettext("enter the code from your authenticator app")
        return render("login.html", status_code=401, next=_safe_next(next), error=error, login=login, need_code=True)
    except NotAuthenticatedError:
        error = gettext("wrong login, password or code")
        return render("login.html", status_code=401, next=_safe_next(next), error=error, login=login)
    except TooManyAttemptsError as exc:
        return render("login.html", status_code=429, next=_safe_next(next), error=str(exc), login=login)
    target = _landing(done.user, _safe_next(next))
    if done.enrol_only:
        target = f"/ui/mfa?next={quote(target, safe='/')}"
    token = issue_token(done.user, settings, done.session_id, ENROL_ONLY if done.enrol_only else None)
    return with_session(request, RedirectResponse(target, status_code=303), token)


def with_session(request: Request, response: Response, token: str) -> Response:
    """``response`` setting the session cookie to ``token``: HttpOnly, SameSite=Strict, Secure over
    HTTPS (or as ``PRESCREEN_COOKIE_SECURE`` says)."""
    settings = get_settings()
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.token_ttl_minutes * 60,
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure if settings.cookie_secure is not None else request.url.scheme == "https",
    )
    return response


def _landing(user: Principal, target: str) -> str:
    """Where a user goes after signing in: ``target``, or for those who read no worklist, their own
    page (the audit trail for an auditor, the models page for others)."""
    if target != "/ui/" or Permission.WORKLISTS_READ in user.permissions:
        return target
    if Permission.AUDIT_READ in user.permissions:
        return "/ui/audit"
    return "/ui/models" if Permission.MODELS_READ in user.permissions else target


@pages_router.post("/logout", dependencies=Public)
def logout(request: Request, user: Annotated[Principal | None, Depends(caller)]) -> Response:
    """End the session: every token of the user stops working, and the browser forgets the cookie."""
    if user is not None:
        sign_out(get_ingestor(request).sessions, user, actor_of(request, user))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@pages_router.get("/locale/{code}", dependencies=Public)
def switch_locale(request: Request, code: str, next: str = "/ui/") -> Response:
    """The language switch of every page: remember ``code`` (``zh_CN`` or ``en``) in a cookie and go
    back to ``next`` (a page of ours only; 404 for a language we do not have)."""
    locale = parse_locale(code)
    if locale is None:
        raise NotFoundError(f"no language {code!r}; one of {', '.join(Locale)}")
    settings = get_settings()
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        LOCALE_COOKIE,
        locale.value,
        max_age=LOCALE_COOKIE_MAX_AGE,
        path="/ui/",
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure if settings.cookie_secure is not None else request.url.scheme == "https",
    )
    return response


@pages_router.get("/static/{name}", dependencies=Public)
def static(name: str) -> Response:
    """The stylesheet and the script (an allow-list; nothing else is served)."""
    media_type = STATIC.get(name)
    if media_type is None:
        raise NotFoundError(f"no static file {name!r}")
    body = (files("prescreen.serving") / "static" / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag, "X-Content-Type-Options": "nosniff"}
    return Response(body, media_type=media_type, headers=headers)


# --- worklists -----------------------------------------------------------------------------


class PageItem(ItemSummary):
    """A worklist row of the pages: the item with the name of who holds its claim."""

    claimed_by_name: str | None


class PageWorklist(TypedDict):
    worklist: str
    items: list[PageItem]
    total: int


def _worklists(ingestor: Ingestor, user: Principal, only: str | None = None) -> list[PageWorklist]:
    targets = get_targets()
    lists: list[WorklistPage] = []
    with ingestor.sessions() as session:
        for specialty in [only] if only else user.specialties:
            items = list_worklist(
                session, specialty, targets, limit=LIST_LIMIT, institutions=user.institutions, viewer_id=user.id
            )
            total = count_open(session, specialty, user.institutions)
            lists.append({"worklist": specialty, "items": items, "total": total})
        names = user_names(session, (i["claimed_by"] for w in lists for i in w["items"]))
    return [
        {
            **w,
            "items": [{**item, "claimed_by_name": names.get(item["claimed_by"] or "")} for item in w["items"]],
        }
        for w in lists
    ]


@pages_router.get("/")
def worklists_page(request: Request, user: PageReader) -> Response:
    """The worklists of the user's specialties: open items, most urgent first."""
    if user is None:
        return to_login(request)
    lists = _worklists(get_ingestor(request), user)
    return _shown(render("worklists.html", user=user, worklists=lists, flash=_pop_flash(request)), request)


@pages_router.get("/worklists/{specialty}/rows")
def worklist_rows(request: Request, user: PageReader, specialty: str) -> Response:
    """The rows of one worklist (what the page's script swaps in every 15 s); 401 without a session."""
    if user is None:
        return Response("sign in again", status_code=401, media_type="text/plain")
    check_access(user, specialty)
    (worklist,) = _worklists(get_ingestor(request), user, only=specialty)
    response = render("_rows.html", user=user, worklist=worklist)
    response.headers["X-Total"] = str(worklist["total"])
    return response


# --- one item ------------------------------------------------------------------------------


@pages_router.get("/items/{item_id}")
def item_page(request: Request, user: PageReader, item_id: str) -> Response:
    """An item: the AI result, a preview of each series, the reports with their signatures, the
    escalations, the history, and the actions the user may take now."""
    if user is None:
        return to_login(request)
    ingestor = get_ingestor(request)
    try:
        with ingestor.sessions.begin() as session:
            item = item_detail(session, item_id, user, get_targets())
            record_study_access(session, AuditEvent.ITEM_READ, actor_of(request, user), item["study_id"], item_id)
            study = study_detail(session, item["study_id"])
            draft = latest_report(session, item_id)
            names = user_names(session, [item["claimed_by"]])
    except PrescreenError as exc:
        return error_page(request, user, exc)
    item["claimed_by_name"] = names.get(item["claimed_by"] or "")
    editing = draft if draft is not None and draft.status == "draft" else None
    response = render(
        "item.html",
        user=user,
        item=item,
        study=study,
        draft_text=editing.text if editing else draft_for(study),
        draft_agrees=bool(editing and editing.ai_agrees),
        draft_label=(editing.physician_label if editing else None) or "",
        flash=_pop_flash(request),
    )
    return _shown(response, request)


_PREVIEW_CACHE: OrderedDict[str, bytes] = OrderedDict()
_PREVIEW_LOCK = threading.Lock()
_PREVIEW_CACHE_SIZE = 32
_PREVIEW_VERSION = "1"


@pages_router.get("/items/{item_id}/series/{series_uid}.png")
def series_preview(request: Request, user: PageReader, item_id: str, series_uid: str) -> Response:
    """A PNG of the series: the first image in its window, or the ECG on its grid (401 without a
    session, 403 outside the user's specialties; a series that cannot be drawn gives a PNG that says
    why, with status 422)."""
    if user is None:
        return Response("sign in again", status_code=401, media_type="text/plain")
    ingestor = get_ingestor(request)
    with ingestor.sessions.begin() as session:
        item, study = load_item(session, item_id)
        check_access(user, item.worklist, study.institution, item=True)
        detail = {"series_uid": series_uid[:64], "as": "preview"}
        record_study_access(session, AuditEvent.IMAGE_READ, actor_of(request, user), study.id, item_id, detail)
        try:
            wanted = preview_files(session, study.id, series_uid)
        except InvalidStudyError as exc:
            return png_response(placeholder_png(str(exc)), 422, None)
    etag = '"' + hashlib.sha256("|".join([_PREVIEW_VERSION, *(k for _, k in wanted)]).encode()).hexdigest()[:32] + '"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "private, no-cache"})
    with _PREVIEW_LOCK:
        cached = _PREVIEW_CACHE.get(etag)
        if cached is not None:
            _PREVIEW_CACHE.move_to_end(etag)
    if cached is not None:
        return png_response(cached, 200, etag)
    try:
        png = series_png(
            [SeriesFile(name, ingestor.blobs.get(key)) for name, key in wanted],
            max_pixels=get_settings().max_image_pixels,
        )
    except PrescreenError as exc:
        return png_response(placeholder_png(str(exc)), 422, None)
    with _PREVIEW_LOCK:
        _PREVIEW_CACHE[etag] = png
        while len(_PREVIEW_CACHE) > _PREVIEW_CACHE_SIZE:
            _PREVIEW_CACHE.popitem(last=False)
    return png_response(png, 200, etag)


def png_response(png: bytes, status: int, etag: str | None) -> Response:
    headers = {"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"}
    if etag:
        headers["ETag"] = etag
    return Response(png, status_code=status, media_type="image/png", headers=headers)


# --- actions (POST, then redirect back: post/redirect/get) ---------------------------------


def _is_saved(ingestor: Ingestor, item_id: str, draft: DraftText) -> bool:
    """Whether the item's current draft already holds this text (signing then saves nothing)."""
    with ingestor.sessions() as session:
        report = latest_report(session, item_id)
    return (
        report is not None
        and report.status == "draft"
        and report.text == draft.text
        and report.ai_agrees == draft.ai_agrees
        and report.physician_label == (draft.physician_label or None)
    )


STEP_UP_NOTE = N_("Amending a final report needs your authenticator code: enter it, then amend again.")
_DONE = {
    "claim": N_("Claimed: the item is yours while you read it."),
    "release": N_("Released: the item is back in the worklist."),
    "draft": N_("Draft saved."),
    "awaiting_review": N_("Signed and submitted for review."),
    "final": N_("Co-signed: the report is final."),
    "return": N_("Returned to the first reader with your comment."),
    "amend": N_("A new version of the report was started as a draft."),
}


@pages_router.post("/items/{item_id}/{action}")
def item_action(
    request: Request,
    user: PageWriter,
    item_id: str,
    action: str,
    text: Annotated[str | None, Form()] = None,
    ai_agrees: Annotated[str | None, Form()] = None,
    comment: Annotated[str | None, Form()] = None,
    text_sha256: Annotated[str | None, Form(max_length=64)] = None,
    physician_label: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    """One action from the item page's forms: ``claim``, ``release``, ``draft`` (``text``,
    ``ai_agrees``, ``physician_label``), ``sign`` (with ``text``: saves that draft first), ``return`` (``comment``) or
    ``amend``; then back to the item with what happened (or why not) as a message."""
    if user is None:
        return to_login(request)
    if action not in ACTIONS:
        raise NotFoundError(f"no action {action!r}; one of {', '.join(ACTIONS)}")
    ingestor = get_ingestor(request)
    settings = get_settings()
    back = RedirectResponse(f"/ui/items/{quote(item_id, safe='')}", status_code=303)
    if action == "amend" and not second_factor_fresh(user):
        # amending a final report is sensitive: the step-up dialog first, then back to the item
        target = f"/ui/step-up?next={quote('/ui/items/' + quote(item_id, safe=''), safe='/')}"
        return _with_flash(RedirectResponse(target, status_code=303), "error", gettext(STEP_UP_NOTE))
    actor = actor_of(request, user)
    options: Mapping[str, Any] = {
        "lease": claim_lease(settings),
        "max_chars": settings.max_report_chars,
        "actor": actor,
    }
    try:
        if action == "return" and not (comment or "").strip():
            raise InvalidRequestError(gettext("write a comment for the first reader: what should change"))
        draft = DraftText((text or "").replace("\r\n", "\n"), ai_agrees is not None, physician_label or None)
        if action == "draft" or (action == "sign" and text is not None and not _is_saved(ingestor, item_id, draft)):
            state = act(ingestor.sessions, item_id, "draft", user, draft=draft, **options)
        if action != "draft":
            note = comment if action == "return" else None
            # a co-sign covers the text the reviewer had on screen (409 if it changed meanwhile)
            digest = text_sha256 if action == "sign" and text is None else None
            state = act(ingestor.sessions, item_id, action, user, comment=note, text_sha256=digest, **options)
    except PrescreenError as exc:
        return _with_flash(back, "error", str(exc))
    done = _DONE.get(state if action == "sign" else action) or N_("Done.")
    return _with_flash(back, "ok", gettext(done))
