"""Time-based one-time passwords (RFC 6238: SHA-1, 30 s, 6 digits, as every authenticator app),
with replay protection, and single-use recovery codes.

A code is accepted for the current 30-second step or the one before or after (clock drift), and only
for a step later than the last one the user spent: a code seen once is refused ever after.
"""

from __future__ import annotations

import hmac
import io
import secrets
import time

import pyotp
import segno

DIGITS = 6
STEP_SECONDS = 30
DRIFT_STEPS = 1
ISSUER = "prescreen"
RECOVERY_CODES = 10


def new_secret() -> str:
    """A fresh base32 secret (160 bits, RFC 4226's recommendation)."""
    return pyotp.random_base32(32)


def otpauth_uri(secret: str, login: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans."""
    return pyotp.TOTP(secret).provisioning_uri(name=login, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code (for the enrolment page)."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=4, xmldecl=False, svgns=True)
    return out.getvalue().decode()


def accepted_step(secret: str, code: str, last_step: int | None, now: float | None = None) -> int | None:
    """The time step ``code`` is valid for, or ``None`` when it is wrong, stale or already spent.

    Args:
        secret: the user's base32 secret.
        code: what the user typed (spaces ignored).
        last_step: the step of the last code this user spent (``None`` if none).
        now: the time (seconds since the epoch); defaults to the clock.
    """
    code = code.replace(" ", "")
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):  # not full-width or other digits
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            if last_step is not None and step <= last_step:
                return None
            return step
    return None


def code_at(secret: str, step: int) -> str:
    """The code of ``secret`` at time step ``step``."""
    return str(pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step))


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """Single-use recovery codes, ``xxxxx-xxxxx`` (50 bits each)."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return [
        "".join(secrets.choice(alphabet) for _ in range(5)) + "-" + "".join(secrets.choice(alphabet) for _ in range(5))
        for _ in range(count)
    ]
