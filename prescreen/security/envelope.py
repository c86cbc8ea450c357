"""SM4-GCM sealing (``cryptography``): data encrypted under a named key with associated data, in
one self-describing envelope.

Format: ``PSE1`` ‖ key id (16 ASCII bytes) ‖ nonce (12) ‖ ciphertext ‖ tag (16). The key id
names the data key (so that the master key can be rotated without re-encrypting data) and is
authenticated with the magic. The associated data (e.g. a blob's content address) is authenticated,
not stored: opening an envelope under another associated datum fails, so a sealed file cannot be
swapped for another.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from prescreen.errors import KeyFileError

MAGIC = b"PSE1"
KEY_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 16  # SM4 is a 128-bit block cipher with 128-bit keys
HEADER = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def is_sealed(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC and len(data) >= HEADER + TAG_BYTES


def key_id_of(data: bytes) -> str:
    """The id of the key an envelope was sealed with.

    Raises:
        KeyFileError: not an envelope.
    """
    if not is_sealed(data):
        raise KeyFileError("not an SM4-GCM envelope")
    try:
        return data[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES].decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError("the envelope's key id is damaged") from None


def seal(key: bytes, key_id: str, plaintext: bytes, associated: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext`` (and ``associated``) under ``key`` with a fresh nonce."""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"an SM4 key has {KEY_BYTES} bytes, not {len(key)}")
    ident = key_id.encode("ascii")
    if len(ident) != KEY_ID_BYTES:
        raise KeyFileError(f"a key id has {KEY_ID_BYTES} characters")
    nonce = os.urandom(NONCE_BYTES)
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(MAGIC + ident + associated)  # the header is authenticated too
    body = encryptor.update(plaintext) + encryptor.finalize()
    return MAGIC + ident + nonce + body + encryptor.tag


def open_sealed(key: bytes, data: bytes, associated: bytes = b"") -> bytes:
    """The plaintext of an envelope.

    Raises:
        KeyFileError: not an envelope, or it does not authenticate (wrong key, changed bytes or
            other associated data).
    """
    if not is_sealed(data):
        raise KeyFileError("not an SM4-GCM envelope")
    nonce = data[len(MAGIC) + KEY_ID_BYTES : HEADER]
    body, tag = data[HEADER:-TAG_BYTES], data[-TAG_BYTES:]
    decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(data[: len(MAGIC) + KEY_ID_BYTES] + associated)
    try:
        return decryptor.update(body) + decryptor.finalize()
    except InvalidTag:
        raise KeyFileError("the sealed data does not authenticate (wrong key, or changed)") from None
