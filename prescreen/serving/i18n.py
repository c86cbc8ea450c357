"""The languages of the readers' pages: Simplified Chinese (``zh_CN``, the default) and English.

How it works:

* **Messages are English.** Every user-visible string of a template is marked, and English is its
  message id: ``{{ _("Sign in") }}``, ``{{ _("%(count)s open", count=w.total) }}`` (Jinja's
  *newstyle* gettext: placeholders are named, values are escaped, and a literal ``%`` is written
  ``%%``), or a block ``{% trans name=user.name %}Signed in as {{ name }}{% endtrans %}`` (blocks are
  *trimmed*: line breaks and indentation inside collapse to one space), with plurals as
  ``{% trans count=n %}{{ count }} file{% pluralize %}{{ count }} files{% endtrans %}``.
  Python code that puts words on a page calls :func:`gettext` (or :func:`ngettext`) at render
  time, or marks a constant with :func:`N_` and translates it when it is shown.
* **Catalogues are ``.po`` files**, one per language other than English, at
  ``prescreen/serving/locale/<locale>/LC_MESSAGES/messages.po``. They are read with Babel
  (:func:`babel.messages.pofile.read_po`) and compiled in memory, once per process: no ``.mo`` file
  is built or committed. A message without a translation (or marked fuzzy) shows in English.
* **Maintenance is by tool**: ``make i18n`` extracts every marked string of ``prescreen/serving``
  (Python and templates, as ``babel.cfg`` maps them) into ``messages.pot`` and merges it into each
  catalogue (``pybabel update``); then translate the new, empty ``msgstr`` entries. Tests fail
  while a marked string is missing from a catalogue or has no translation, and while a template
  shows a word outside ``{{ _(...) }}`` / ``{% trans %}`` (``tests/serving/test_i18n.py``).
* **The language of a request** is the ``prescreen_locale`` cookie, which the switch in every page's
  header sets (``GET /ui/locale/{code}?next=/ui/...``), else ``PRESCREEN_LOCALE``. The page
  dependencies call :func:`bind_locale`, which keeps it in a context variable for the request, so
  ``render`` needs no request argument and a new page gets its language without doing anything
  (a page route depends on ``page_user(...)`` or ``public_page`` anyway; one without them is
  rendered in ``PRESCREEN_LOCALE``).
  There is one Jinja :class:`~jinja2.Environment` per language with its translations installed
  once; nothing global changes per request, so threads serving different languages do not meet.
* **Dates** are shown in the hospital's time zone (``PRESCREEN_TIMEZONE``, default
  ``Asia/Shanghai``) by :func:`local_time` (the templates' ``when`` filter). A ``<time datetime>``
  attribute keeps the ISO time for the page's script.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from zoneinfo import ZoneInfo

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from fastapi import Request
from jinja2 import Environment

from prescreen.config import get_settings

LOCALE_COOKIE = "prescreen_locale"
"""The cookie holding the reader's choice of language (not a secret; one year)."""
LOCALE_COOKIE_MAX_AGE = 365 * 24 * 3600
DOMAIN = "messages"
DATETIME_FORMAT = "%Y-%m-%d %H:%M"


class Locale(StrEnum):
    """The languages of the pages. English is the language of the message ids (no catalogue)."""

    ZH_CN = "zh_CN"
    EN = "en"

    @property
    def html_lang(self) -> str:
        """The BCP 47 tag for ``<html lang>``: ``zh-CN``, ``en``."""
        return self.value.replace("_", "-")


SOURCE_LOCALE = Locale.EN


def catalogue_file(locale: Locale) -> Traversable:
    """The ``.po`` catalogue of ``locale`` inside the package."""
    return files("prescreen.serving") / "locale" / locale.value / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def translations(locale: Locale) -> NullTranslations:
    """The translations of ``locale``, read from its ``.po`` file and compiled in memory (cached).

    Fuzzy entries are left out, as ``msgfmt`` does: they show in English until confirmed.
    """
    if locale == SOURCE_LOCALE:
        return NullTranslations()
    with catalogue_file(locale).open("rb") as fh:
        catalog = read_po(fh, locale=locale.value, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


# --- the language of a request ---------------------------------------------------------------


@dataclass(frozen=True)
class PageLocale:
    """The language a page is rendered in, and the page's own address (where the switch returns)."""

    locale: Locale
    path: str = "/ui/"

    @property
    def lang(self) -> str:
        return self.locale.html_lang


_current: ContextVar[PageLocale | None] = ContextVar("prescreen_page_locale", default=None)


def default_locale() -> Locale:
    """``PRESCREEN_LOCALE``."""
    return Locale(get_settings().locale)


def parse_locale(code: str | None) -> Locale | None:
    """``code`` as a supported locale, or ``None``."""
    try:
        return Locale(code) if code else None
    except ValueError:
        return None


def choose_locale(request: Request) -> Locale:
    """The request's language: the reader's cookie when it names a supported one, else the setting."""
    return parse_locale(request.cookies.get(LOCALE_COOKIE)) or default_locale()


async def bind_locale(request: Request) -> Locale:
    """A dependency of every page: remembers the request's language for :func:`current`.

    Async on purpose: FastAPI awaits it in the request's own task, so the context variable it sets
    is seen by the (threadpool) endpoint that runs after it, and by nothing else.
    """
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    locale = choose_locale(request)
    _current.set(PageLocale(locale, path))
    return locale


@contextmanager
def use_locale(locale: Locale, path: str = "/ui/") -> Iterator[PageLocale]:
    """Render in ``locale`` inside the block (outside a request: tests, scripts); restored after it."""
    token = _current.set(PageLocale(locale, path))
    try:
        yield PageLocale(locale, path)
    finally:
        _current.reset(token)


def current() -> PageLocale:
    """The language of the page being rendered (the setting outside a request)."""
    return _current.get() or PageLocale(default_locale())


def gettext(message: str, **variables: object) -> str:
    """``message`` in the current page's language; ``%(name)s`` placeholders filled from ``variables``."""
    text = translations(current().locale).gettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: object) -> str:
    """The singular or plural form for ``n``, translated; ``%(num)s`` is ``n``."""
    text = translations(current().locale).ngettext(singular, plural, n)
    return text % {"num": n, **variables}


def N_(message: str) -> str:  # the usual name, which the extractor knows
    """Mark a constant for extraction without translating it (translate when it is shown)."""
    return message


# --- Jinja and dates -------------------------------------------------------------------------


def install(env: Environment, locale: Locale) -> None:
    """Give ``env`` (built with the ``jinja2.ext.i18n`` extension) the translations of ``locale``
    and the ``when`` filter. Call once per environment, before it renders anything."""
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    env.filters["when"] = local_time


def local_time(value: str | datetime | None) -> str:
    """A moment as ``YYYY-MM-DD HH:MM`` in the hospital's time zone (``PRESCREEN_TIMEZONE``); a
    naive value is UTC (as the store keeps them); ``—`` for none."""
    if value is None or value == "":
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(ZoneInfo(get_settings().timezone)).strftime(DATETIME_FORMAT)
