"""Where the service's keys live: under ``$PRESCREEN_HOME/keys`` (owner-only), each made once on
first use and never printed. The data-protection work wraps them under a master key; until then they
are plain owner-only files, like the token signing key.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path

from prescreen.config import Settings
from prescreen.errors import KeyFileError
from prescreen.security.sm import Sm2Signer, hmac_sm3_hex, service_signer, write_private


def keys_dir(settings: Settings) -> Path:
    return settings.home / "keys"


@lru_cache(maxsize=16)
def file_secret(path: Path, nbytes: int = 32) -> bytes:
    """A random secret kept in ``path`` (made once, mode 0600; read once per process)."""
    if not path.exists():
        write_private(path, secrets.token_hex(nbytes).encode())
    value = path.read_text().strip()
    if len(value) < 2 * 16:
        raise KeyFileError(f"the key in {path} is too short; delete it to make a new one")
    return bytes.fromhex(value)


def pseudonym_key(settings: Settings) -> bytes:
    """The key of patient pseudonyms in the audit trail (HMAC-SM3 of the patient id)."""
    return file_secret(keys_dir(settings) / "audit-pseudonym.key")


def patient_pseudonym(settings: Settings, patient_id: str | None) -> str | None:
    """The audit trail's stand-in for a patient id: HMAC-SM3 under :func:`pseudonym_key` (the same id
    always gives the same value, so an auditor can search by patient; the id itself is not recoverable)."""
    if not patient_id:
        return None
    return hmac_sm3_hex(pseudonym_key(settings), patient_id.encode())


def audit_signer(settings: Settings) -> Sm2Signer:
    """The service's SM2 key pair that signs audit checkpoints."""
    return service_signer(keys_dir(settings))


def audit_public_key(settings: Settings) -> str:
    """The public half of :func:`audit_signer` (PEM), as ``keys/service-sm2.pub.pem`` holds it."""
    return audit_signer(settings).public_pem()
