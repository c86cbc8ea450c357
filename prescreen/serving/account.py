"""Signing in over HTTP: the token (password, and a TOTP code once enrolled), sign-out, who am I,
TOTP enrolment and the step-up a sensitive operation needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from prescreen.config import get_settings
from prescreen.security import totp
from prescreen.serving.auth import (
    ENROL_ONLY,
    Permission,
    SignedIn,
    actor_of,
    check_fresh,
    client_address,
    issue_token,
    require,
)
from prescreen.serving.deps import IngestorDep
from prescreen.serving.schemas import UserOut
from prescreen.store.signin import confirm, enrol, sign_in, sign_out, step_up

auth_router = APIRouter(prefix="/v1/auth", tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    scope: str | None = Field(None, description="'enrol' when the token may only enrol a second factor")


class Code(BaseModel):
    totp: str = Field(min_length=6, max_length=16, description="A TOTP code (or, for step-up, a recovery code)")


class Enrolment(BaseModel):
    secret: str = Field(description="The base32 TOTP secret (shown once; enter it in an authenticator app)")
    otpauth_uri: str = Field(description="The otpauth:// URI (what the QR code holds)")
    qr_svg: str = Field(description="The URI as an SVG QR code")


class Confirmed(Token):
    recovery_codes: list[str] = Field(description="Single-use codes for a lost phone (shown once)")


def _token(user_token: str) -> Token:
    return Token(access_token=user_token, expires_in=get_settings().token_ttl_minutes * 60)


@auth_router.post("/token", dependencies=[Depends(require(Permission.HEALTH))])
def token(
    ingestor: IngestorDep,
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    totp_code: Annotated[str | None, Form(alias="totp", max_length=16)] = None,
) -> Token:
    """OAuth2 password flow: a bearer token for ``Authorization: Bearer ...``. With
    ``PRESCREEN_MFA=login`` an enrolled user also sends ``totp`` (401 ``mfa_required`` without it);
    one who has not enrolled gets a token with scope ``enrol`` that can only enrol. 401 on a wrong
    login or password, without saying which; 429 after repeated failures."""
    settings = get_settings()
    done = sign_in(ingestor.sessions, form.username, form.password, totp_code, client_address(request), settings.mfa)
    scope = ENROL_ONLY if done.enrol_only else None
    issued = issue_token(done.user, settings, done.session_id, scope)
    return Token(access_token=issued, expires_in=settings.token_ttl_minutes * 60, scope=scope)


@auth_router.post("/logout", status_code=204)
def logout(ingestor: IngestorDep, request: Request, user: SignedIn) -> None:
    """Sign out: this session ends; its tokens stop working."""
    sign_out(ingestor.sessions, user, actor_of(request, user))


@auth_router.get("/me")
def me(user: SignedIn) -> UserOut:
    """The signed-in user."""
    return {
        "id": user.id,
        "login": user.login,
        "name": user.name,
        "grade": user.grade,
        "specialties": list(user.specialties),
        "institution": user.institution,
        "institutions": list(user.institutions),
        "roles": [r.value for r in user.roles],
        "second_factor": user.totp_enabled,
    }


@auth_router.post("/totp/enroll")
def totp_enroll(ingestor: IngestorDep, user: SignedIn) -> Enrolment:
    """Start TOTP enrolment: a new secret, its otpauth URI and QR code. Confirm with a first code at
    ``/v1/auth/totp/confirm``. Replacing a second factor already in force needs a step-up first."""
    if user.totp_enabled:
        check_fresh(user)
    secret = enrol(ingestor.sessions, user)
    uri = totp.otpauth_uri(secret, user.login)
    return Enrolment(secret=secret, otpauth_uri=uri, qr_svg=totp.qr_svg(uri))


@auth_router.post("/totp/confirm")
def totp_confirm(ingestor: IngestorDep, request: Request, user: SignedIn, body: Code) -> Confirmed:
    """Put the enrolled secret in force with a first code. Returns single-use recovery codes and a
    full token (the session counts as stepped up)."""
    codes = confirm(ingestor.sessions, user, body.totp, actor_of(request, user))
    settings = get_settings()
    issued = issue_token(user, settings, user.session_id)
    return Confirmed(access_token=issued, expires_in=settings.token_ttl_minutes * 60, recovery_codes=codes)


@auth_router.post("/step-up")
def auth_step_up(ingestor: IngestorDep, request: Request, user: SignedIn, body: Code) -> Token:
    """Give a second factor now (TOTP or a recovery code): for ``PRESCREEN_STEP_UP_MINUTES`` the
    session may do sensitive operations. Returns a token of the same session."""
    step_up(ingestor.sessions, user, body.totp, actor_of(request, user))
    return _token(issue_token(user, get_settings(), user.session_id))
