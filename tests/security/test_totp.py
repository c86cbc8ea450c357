"""Time-based one-time passwords (``prescreen.security.totp``) at fixed times, checked against
pyotp: the accepted window, replay protection, malformed codes, enrolment and recovery codes."""

from __future__ import annotations

import re
import urllib.parse
from xml.etree import ElementTree as ET

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.security import totp
from prescreen.security.totp import accepted_step, code_at, new_recovery_codes, new_secret, otpauth_uri, qr_svg

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_700_000_012.5  # inside a step, 12.5 s after its start
STEP = int(NOW // 30)


def code(at: float, secret: str = SECRET) -> str:
    return pyotp.TOTP(secret).at(at)


def test_constants_are_the_authenticator_apps() -> None:
    assert (totp.DIGITS, totp.STEP_SECONDS, totp.DRIFT_STEPS) == (6, 30, 1)


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_current_previous_and_next_step_are_accepted(offset: int) -> None:
    assert accepted_step(SECRET, code(NOW + 30 * offset), None, now=NOW) == STEP + offset


@pytest.mark.parametrize("offset", [-3, -2, 2, 3, 100])
def test_codes_two_or_more_steps_off_are_refused(offset: int) -> None:
    other = code(NOW + 30 * offset)
    if other in {code(NOW + 30 * k) for k in (-1, 0, 1)}:
        pytest.skip("the code happens to equal one in the window")
    assert accepted_step(SECRET, other, None, now=NOW) is None


def test_window_edges_follow_the_step_boundaries() -> None:
    start = STEP * 30
    # at the first instant of a step, the code of two steps before is out
    assert accepted_step(SECRET, code(start - 60), None, now=start) is None
    assert accepted_step(SECRET, code(start - 30), None, now=start) == STEP - 1
    # at its last instant, the code of the next step is in
    assert accepted_step(SECRET, code(start + 30), None, now=start + 29.999) == STEP + 1


def test_spaces_in_the_code_are_ignored() -> None:
    c = code(NOW)
    assert accepted_step(SECRET, f"{c[:3]} {c[3:]}", None, now=NOW) == STEP
    assert accepted_step(SECRET, f" {c} ", None, now=NOW) == STEP


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12345a", "abcdef", "12-456", "+12345", "-12345", "1234.5"])
def test_wrong_length_or_non_digits_are_refused(bad: str) -> None:
    assert accepted_step(SECRET, bad, None, now=NOW) is None


def test_a_code_of_a_seven_digit_prefix_is_refused() -> None:
    assert accepted_step(SECRET, code(NOW) + "0", None, now=NOW) is None


def test_another_secrets_code_is_refused() -> None:
    other = code(NOW, "KRUGS4ZANFZSAYJAONSWG4TFOQ2Q2Q2Q")
    if other in {code(NOW + 30 * k) for k in (-1, 0, 1)}:
        pytest.skip("the codes of the two secrets collide")
    assert accepted_step(SECRET, other, None, now=NOW) is None


def test_a_spent_code_is_refused_ever_after() -> None:
    c = code(NOW)
    spent = accepted_step(SECRET, c, None, now=NOW)
    assert spent == STEP
    assert accepted_step(SECRET, c, spent, now=NOW) is None
    assert accepted_step(SECRET, c, spent, now=NOW + 20) is None  # still inside the window


@pytest.mark.parametrize(("offset", "last"), [(0, STEP), (0, STEP + 1), (-1, STEP - 1), (-1, STEP), (1, STEP + 1)])
def test_a_code_at_or_before_the_last_step_is_refused(offset: int, last: int) -> None:
    assert accepted_step(SECRET, code(NOW + 30 * offset), last, now=NOW) is None


@pytest.mark.parametrize(("offset", "last"), [(0, STEP - 1), (1, STEP), (-1, STEP - 2), (0, 0)])
def test_a_code_after_the_last_step_is_accepted(offset: int, last: int) -> None:
    assert accepted_step(SECRET, code(NOW + 30 * offset), last, now=NOW) == STEP + offset


def test_the_clock_is_used_without_now() -> None:
    import time

    now = time.time()
    assert accepted_step(SECRET, code(now), None) in {int(now // 30), int(now // 30) + 1}


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2, max_value=2**31), st.integers(min_value=-1, max_value=1))
def test_code_at_matches_pyotp_and_is_accepted(step: int, offset: int) -> None:
    expected = pyotp.TOTP(SECRET).at(step * 30)
    assert code_at(SECRET, step) == expected
    assert re.fullmatch(r"\d{6}", code_at(SECRET, step))
    assert accepted_step(SECRET, code_at(SECRET, step + offset), None, now=step * 30 + 7) == step + offset
    assert accepted_step(SECRET, code_at(SECRET, step + offset), step + offset, now=step * 30 + 7) is None


def test_code_at_keeps_leading_zeros() -> None:
    # find a step whose code starts with 0 and check it is still 6 characters
    step = next(s for s in range(1000) if pyotp.TOTP(SECRET).at(s * 30).startswith("0"))
    assert code_at(SECRET, step) == pyotp.TOTP(SECRET).at(step * 30)
    assert len(code_at(SECRET, step)) == 6


def test_new_secret_is_160_bits_of_base32() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for s in secrets:
        assert re.fullmatch(r"[A-Z2-7]{32}", s)
        assert pyotp.TOTP(s).now()  # usable by pyotp


def test_otpauth_uri_names_the_issuer_and_the_login() -> None:
    uri = otpauth_uri(SECRET, "dr.wang")
    assert uri.startswith("otpauth://totp/")
    assert "issuer=prescreen" in uri
    assert "dr.wang" in uri
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    assert query["secret"] == [SECRET]
    assert query["issuer"] == ["prescreen"]
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == SECRET
    assert parsed.name == "dr.wang"
    assert parsed.at(NOW) == code(NOW)


def test_qr_svg_is_an_inline_svg() -> None:
    svg = qr_svg(otpauth_uri(SECRET, "dr.wang"))
    assert svg.startswith("<svg")
    assert "<?xml" not in svg
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") and root.get("height")


def test_recovery_codes_are_unique_and_of_the_documented_shape() -> None:
    codes = new_recovery_codes()
    assert len(codes) == totp.RECOVERY_CODES == 10
    assert len(set(codes)) == 10
    shape = re.compile(r"[abcdefghjkmnpqrstuvwxyz23456789]{5}-[abcdefghjkmnpqrstuvwxyz23456789]{5}")
    for c in codes:
        assert shape.fullmatch(c), c
        assert not set(c) & set("ilo01")  # no characters that read alike
    assert len(new_recovery_codes(3)) == 3
    assert new_recovery_codes(0) == []


def test_recovery_codes_differ_between_calls() -> None:
    assert set(new_recovery_codes()).isdisjoint(new_recovery_codes())


@pytest.mark.parametrize("typed", ["１２３４５６", "١٢٣٤٥٦", "12345²"])
def test_non_ascii_digits_are_refused_not_raised(typed: str) -> None:
    assert accepted_step(SECRET, typed, None, now=NOW) in (None, STEP)
