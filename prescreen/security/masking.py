"""One masking rule for patient data, used by every list, payload, page, log and error message.

Names keep their first character and, when they have three or more, their last; every other
character becomes ``*``: ``张三丰 → 张*丰``, ``张三 → 张*``, ``欧阳娜娜 → 欧**娜``. A DICOM person
name is masked per ``^`` component (``Rivera^Ana → R*****^A**``). Identifiers keep their last 4
characters; birth dates keep the year.
"""

from __future__ import annotations

import re

MASK = "*"
KEEP_ID_CHARS = 4
_YEAR = re.compile(r"^\s*(\d{4})")


def mask_name(name: str | None) -> str | None:
    """A masked person name; ``None`` and empty names stay as they are.

    Each DICOM component (``Family^Given^Middle^Prefix^Suffix``) and each space-separated word is
    masked on its own, so ``Rivera^Ana`` gives ``R*****^A**`` and ``Ana Rivera`` gives ``A** R*****``.
    """
    if not name:
        return name
    return "^".join(" ".join(_mask_word(word) for word in part.split(" ")) for part in name.split("^"))


def _mask_word(word: str) -> str:
    if len(word) <= 1:
        return word
    if len(word) == 2 or not _is_cjk(word):
        return word[0] + MASK * (len(word) - 1)
    return word[0] + MASK * (len(word) - 2) + word[-1]


def _is_cjk(word: str) -> bool:
    """Whether a word is written in CJK ideographs (a Chinese name keeps its last character)."""
    return all(
        "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\U00020000" <= ch <= "\U0003134f" for ch in word
    )


def mask_id(value: str | None) -> str | None:
    """An identifier with all but its last 4 characters masked (``P00012345 → *****2345``); ids
    of 4 characters or fewer are masked whole."""
    if not value:
        return value
    if len(value) <= KEEP_ID_CHARS:
        return MASK * len(value)
    return MASK * (len(value) - KEEP_ID_CHARS) + value[-KEEP_ID_CHARS:]


def mask_birth_date(value: str | None) -> str | None:
    """A birth date with only its year kept (``19650412`` or ``1965-04-12`` → ``1965``)."""
    if not value:
        return value
    year = _YEAR.match(value)
    return year.group(1) if year else MASK * len(value)
