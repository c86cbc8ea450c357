"""The service's own keys, kept in the keyring (:mod:`prescreen.security.keyring`) wrapped by the
master key: the SM2 key pair that signs audit checkpoints and backup manifests, and the key of patient
pseudonyms in the audit trail. A key an earlier version kept as a plain file in ``$PRESCREEN_HOME/keys``
is moved into the keyring on first use, and the file removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from prescreen.config import Settings
from prescreen.security.keyring import keyring_for
from prescreen.security.sm import Sm2Signer, hmac_sm3_hex

SERVICE_SM2 = "sm2:service"
PSEUDONYM = "pseudonym"
PUBLIC_PEM = "service-sm2.pub.pem"


def keys_dir(settings: Settings) -> Path:
    return settings.home / "keys"


def _legacy(path: Path, make: bytes) -> bytes:
    """The content of a key file of an earlier version (then removed), else ``make``."""
    if not path.is_file():
        return make
    content = path.read_bytes()
    path.unlink()
    return content


def pseudonym_key(settings: Settings) -> bytes:
    """The key of patient pseudonyms in the audit trail (HMAC-SM3 of the patient id)."""

    def make() -> bytes:
        legacy = _legacy(keys_dir(settings) / "audit-pseudonym.key", b"")
        return bytes.fromhex(legacy.decode().strip()) if legacy else os.urandom(32)

    return keyring_for(settings).secret_or_make(PSEUDONYM, make)


def patient_pseudonym(settings: Settings, patient_id: str | None) -> str | None:
    """The audit trail's stand-in for a patient id: HMAC-SM3 under :func:`pseudonym_key` (the same id
    always gives the same value, so an auditor can search by patient; the id itself is not recoverable)."""
    if not patient_id:
        return None
    return hmac_sm3_hex(pseudonym_key(settings), patient_id.encode())


def audit_signer(settings: Settings) -> Sm2Signer:
    """The service's SM2 key pair (audit checkpoints, backup manifests); its public key is also
    written to ``keys/service-sm2.pub.pem`` for ``openssl pkeyutl -verify``."""
    folder = keys_dir(settings)
    pem = keyring_for(settings).secret_or_make(
        SERVICE_SM2, lambda: _legacy(folder / "service-sm2.pem", Sm2Signer.generate().private_pem())
    )
    signer = Sm2Signer.from_pem(pem)
    public = folder / PUBLIC_PEM
    if not public.is_file() or public.read_text() != signer.public_pem():
        public.write_text(signer.public_pem())
    return signer


def audit_public_key(settings: Settings) -> str:
    """The public half of :func:`audit_signer` (PEM)."""
    return audit_signer(settings).public_pem()
