"""A column type whose values are stored sealed (SM4-GCM): ``sm4:`` + base64 of an envelope under the
keyring's current data key, opened on read; a plain value written by an earlier version is read as it
is (``prescreen encrypt-existing`` seals it)."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from prescreen.config import get_settings
from prescreen.security.keyring import keyring_for, open_sealed_any

PREFIX = "sm4:"
COLUMN_AAD = b"prescreen-column"


class SealedText(TypeDecorator[str]):
    """A text column stored encrypted (SM4-GCM); ``None`` stays ``None``."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        sealed = keyring_for(get_settings()).seal(value.encode("utf-8"), COLUMN_AAD)
        return PREFIX + base64.b64encode(sealed).decode("ascii")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        text = str(value)
        if not text.startswith(PREFIX):
            return text  # a plain value of an earlier version
        sealed = base64.b64decode(text[len(PREFIX) :])
        return open_sealed_any(keyring_for(get_settings()), sealed, COLUMN_AAD).decode("utf-8")


def is_sealed_value(value: str | None) -> bool:
    return value is not None and value.startswith(PREFIX)
