"""The national algorithms (``prescreen.security.sm``): SM3 against the standard's test vectors,
HMAC-SM3, SM2 signatures that round-trip and that OpenSSL verifies, and the service key file."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec as c_ec
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.errors import KeyFileError
from prescreen.security.sm import (
    SM2_USER_ID,
    Sm2Signer,
    hmac_sm3_hex,
    sm3,
    sm3_hex,
    verify_sm2,
    write_private,
)

# GB/T 32905-2016, appendix A
SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
SM3_ABCD16 = "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


@pytest.fixture(scope="module")
def signer() -> Sm2Signer:
    return Sm2Signer.generate()


def test_sm3_of_abc_is_the_standard_vector() -> None:
    assert sm3_hex(b"abc") == SM3_ABC
    assert sm3(b"abc") == bytes.fromhex(SM3_ABC)
    assert len(sm3(b"")) == 32


def test_sm3_of_the_64_byte_message_is_the_standard_vector() -> None:
    assert sm3_hex(b"abcd" * 16) == SM3_ABCD16


def test_hmac_sm3_is_keyed() -> None:
    a = hmac_sm3_hex(b"k" * 32, b"P00012345")
    assert a == hmac_sm3_hex(b"k" * 32, b"P00012345")
    assert a != hmac_sm3_hex(b"j" * 32, b"P00012345")
    assert a != hmac_sm3_hex(b"k" * 32, b"P00012346")
    assert a != sm3_hex(b"P00012345")
    assert len(a) == 64
    assert int(a, 16) >= 0


def test_hmac_sm3_matches_the_hmac_construction() -> None:
    # RFC 2104 with SM3 (64-byte blocks), computed by hand from sm3()
    key, data = b"key", b"The quick brown fox jumps over the lazy dog"
    padded = key.ljust(64, b"\0")
    inner = sm3(bytes(b ^ 0x36 for b in padded) + data)
    expected = sm3(bytes(b ^ 0x5C for b in padded) + inner).hex()
    assert hmac_sm3_hex(key, data) == expected


def test_sign_and_verify_round_trip(signer: Sm2Signer) -> None:
    message = b"prescreen-audit-checkpoint\n1\n" + b"0" * 64
    signature = signer.sign(message)
    assert signature[0] == 0x30  # DER SEQUENCE
    assert verify_sm2(signer.public_pem(), message, signature)


def _der_integer_positions(signature: bytes) -> list[int]:
    """The positions of the bytes of r and s in a DER ``SEQUENCE { INTEGER r, INTEGER s }``."""
    assert signature[0] == 0x30 and signature[2] == 0x02
    r_len = signature[3]
    s_at = 4 + r_len
    assert signature[s_at] == 0x02
    s_len = signature[s_at + 1]
    return [*range(4, 4 + r_len), *range(s_at + 2, s_at + 2 + s_len)]


def test_a_flipped_message_byte_fails(signer: Sm2Signer) -> None:
    message = b"the record at 42 hashes to abc"
    signature = signer.sign(message)
    for i in range(len(message)):
        tampered = bytearray(message)
        tampered[i] ^= 0x01
        assert not verify_sm2(signer.public_pem(), bytes(tampered), signature)


def test_a_flipped_signature_byte_fails(signer: Sm2Signer) -> None:
    message = b"the record at 42 hashes to abc"
    signature = signer.sign(message)
    for i in _der_integer_positions(signature):
        tampered = bytearray(signature)
        tampered[i] ^= 0x01
        assert not verify_sm2(signer.public_pem(), message, bytes(tampered)), i


@pytest.mark.parametrize("how", ["empty", "garbage", "sequence-tag", "sequence-length", "integer-tag"])
def test_a_malformed_signature_fails_without_raising(signer: Sm2Signer, how: str) -> None:
    signature = bytearray(signer.sign(b"m"))
    if how == "empty":
        signature = bytearray()
    elif how == "garbage":
        signature = bytearray(b"garbage")
    elif how == "sequence-tag":
        signature[0] ^= 0x01
    elif how == "sequence-length":
        signature[1] ^= 0x01
    else:
        signature[2] ^= 0x01
    assert verify_sm2(signer.public_pem(), b"m", bytes(signature)) is False


def test_a_public_key_of_another_curve_does_not_verify(signer: Sm2Signer) -> None:
    assert verify_sm2(_p256_public_pem(), b"m", signer.sign(b"m")) is False


def test_another_key_does_not_verify(signer: Sm2Signer) -> None:
    other = Sm2Signer.generate()
    assert not verify_sm2(other.public_pem(), b"m", signer.sign(b"m"))
    assert other.key_id() != signer.key_id()


@pytest.mark.parametrize("pem", ["", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_a_garbage_public_key_does_not_verify(signer: Sm2Signer, pem: str) -> None:
    assert not verify_sm2(pem, b"m", signer.sign(b"m"))


def test_signatures_are_randomised(signer: Sm2Signer) -> None:
    a, b = signer.sign(b"m"), signer.sign(b"m")
    assert a != b
    assert verify_sm2(signer.public_pem(), b"m", a)
    assert verify_sm2(signer.public_pem(), b"m", b)


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=300))
def test_any_message_round_trips(signer: Sm2Signer, message: bytes) -> None:
    assert verify_sm2(signer.public_pem(), message, signer.sign(message))
    assert not verify_sm2(signer.public_pem(), message + b"\0", signer.sign(message))


def test_pem_round_trip_keeps_the_key(signer: Sm2Signer) -> None:
    again = Sm2Signer.from_pem(signer.private_pem())
    assert again.public_pem() == signer.public_pem()
    assert again.key_id() == signer.key_id()
    assert verify_sm2(signer.public_pem(), b"x", again.sign(b"x"))
    assert signer.public_pem().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(signer.key_id()) == 16
    assert signer.key_id() == sm3_hex(signer.public_pem().encode())[:16]


def _p256_private_pem() -> bytes:
    key = c_ec.generate_private_key(c_ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _p256_public_pem() -> str:
    key = c_ec.generate_private_key(c_ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_from_pem_refuses_a_key_of_another_curve() -> None:
    with pytest.raises(KeyFileError):
        Sm2Signer.from_pem(_p256_private_pem())


def _openssl_verify(
    tmp_path: Path, public_pem: str, message: bytes, signature: bytes
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pub.pem").write_text(public_pem)
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(signature)
    return subprocess.run(
        [
            "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-digest", "sm3",
            "-in", "msg", "-sigfile", "sig", "-pkeyopt", f"distid:{SM2_USER_ID.decode()}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_verifies_the_signature(signer: Sm2Signer, tmp_path: Path) -> None:
    message = b"prescreen-audit-checkpoint\n50\n" + b"ab" * 32 + b"\n2024-01-02T03:04:05.000006Z\n"
    signature = signer.sign(message)
    good = _openssl_verify(tmp_path, signer.public_pem(), message, signature)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Signature Verified Successfully" in good.stdout
    bad = _openssl_verify(tmp_path, signer.public_pem(), message.replace(b"50", b"51"), signature)
    assert bad.returncode != 0
    assert "Signature Verified Successfully" not in bad.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_refuses_another_signer_id(signer: Sm2Signer, tmp_path: Path) -> None:
    """The signature is bound to the standard signer id: another distid does not verify."""
    message = b"checkpoint"
    (tmp_path / "pub.pem").write_text(signer.public_pem())
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(signer.sign(message))
    other = subprocess.run(
        [
            "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-digest", "sm3",
            "-in", "msg", "-sigfile", "sig", "-pkeyopt", "distid:8765432187654321",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert other.returncode != 0


def test_write_private_keeps_the_first_writer(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "secret"
    write_private(path, b"first")
    write_private(path, b"second")
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["secret"]


def test_signature_base64_round_trip(signer: Sm2Signer) -> None:
    signature = base64.b64encode(signer.sign(b"m")).decode()
    assert verify_sm2(signer.public_pem(), b"m", base64.b64decode(signature))
