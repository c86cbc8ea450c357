"""The national algorithms: SM3 hashes (``cryptography``) and SM2 signatures (``tongsuopy``).

SM2 signatures are DER-encoded, over the message with the standard signer id
``1234567812345678`` (GB/T 32918's default, which ``openssl pkeyutl -pkeyopt distid:1234567812345678``
verifies). ``gmssl`` is never used for keys: its SM2 nonce comes from Python's ``random``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes as c_hashes
from tongsuopy.crypto import hashes as t_hashes
from tongsuopy.crypto import serialization
from tongsuopy.crypto.asymciphers import ec
from tongsuopy.crypto.exceptions import InvalidSignature

from prescreen.errors import KeyFileError

SM2_USER_ID = b"1234567812345678"


def sm3(data: bytes) -> bytes:
    """The SM3 digest of ``data`` (32 bytes)."""
    digest = c_hashes.Hash(c_hashes.SM3())
    digest.update(data)
    return digest.finalize()


def sm3_hex(data: bytes) -> str:
    return sm3(data).hex()


def sm3_file_hex(path: Path, chunk: int = 1 << 20) -> str:
    """SM3 of a file, read a chunk at a time (a database snapshot need not fit in memory)."""
    digest = c_hashes.Hash(c_hashes.SM3())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.finalize().hex()


def hmac_sm3_hex(key: bytes, data: bytes) -> str:
    """HMAC-SM3 of ``data`` under ``key``, hex: a keyed hash that reveals nothing without the key."""
    from cryptography.hazmat.primitives import hmac as c_hmac

    mac = c_hmac.HMAC(key, c_hashes.SM3())
    mac.update(data)
    return mac.finalize().hex()


class Sm2Signer:
    """An SM2 key pair that signs (DER, SM3, standard user id) and verifies."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key

    @classmethod
    def generate(cls) -> Sm2Signer:
        return cls(ec.generate_private_key(ec.SM2()))

    @classmethod
    def from_pem(cls, pem: bytes) -> Sm2Signer:
        """Raises:
        KeyFileError: not a PEM private key, or not an SM2 one."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except Exception:  # tongsuopy raises UnsupportedAlgorithm / ValueError for other kinds
            raise KeyFileError("the key is not an SM2 private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SM2):
            raise KeyFileError("the key is not an SM2 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        pem: bytes = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return pem

    def public_pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM (what ``openssl pkeyutl -pubin`` reads)."""
        pem: bytes = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode()

    def key_id(self) -> str:
        """The first 16 hex digits of the SM3 hash of the public key: names the key in records."""
        return sm3_hex(self.public_pem().encode())[:16]

    def sign(self, message: bytes) -> bytes:
        """The DER SM2 signature of ``message``."""
        signature: bytes = self._key.sign(message, ec.ECDSA(t_hashes.SM3()))
        return signature


def verify_sm2(public_pem: str, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (DER) is the SM2 signature of ``message`` under ``public_pem``."""
    try:
        key = serialization.load_pem_public_key(public_pem.encode())
    except Exception:  # not PEM, or a kind tongsuopy does not take (UnsupportedAlgorithm)
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SM2):
        return False
    try:
        key.verify(signature, message, ec.ECDSA(t_hashes.SM3()))
    except (InvalidSignature, ValueError):
        return False
    except Exception:  # malformed DER makes tongsuopy raise InternalError: not a valid signature either
        return False
    return True


def write_private(path: Path, content: bytes) -> None:
    """Write a secret file once, owner-only, whole or not at all (the first writer wins)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        os.unlink(temp)
