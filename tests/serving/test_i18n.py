"""The pages' languages: Simplified Chinese by default, English by the reader's switch (a cookie) or
``PRESCREEN_LOCALE``; the catalogue covers every marked string; dates in the hospital's time zone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_file
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from babel.util import pathmatch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from prescreen.config import Settings, get_settings
from prescreen.serving.errors import install_error_handlers
from prescreen.serving.i18n import LOCALE_COOKIE, Locale, current, local_time, translations, use_locale
from prescreen.serving.pages import pages_router, render

REPO = Path(__file__).resolve().parents[2]
SERVING = REPO / "prescreen" / "serving"
CATALOGUE = SERVING / "locale" / "zh_CN" / "LC_MESSAGES" / "messages.po"
PLACEHOLDER = re.compile(r"%\([a-z_]+\)s|%%|</?strong>")


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(pages_router)
    install_error_handlers(app)
    yield TestClient(app, follow_redirects=False)


# --- the catalogue -------------------------------------------------------------------------


def marked_messages() -> dict[str | tuple[str, ...], str]:
    """Every string marked in the pages' Python and templates, extracted as ``make i18n`` does (its
    ``babel.cfg``), with a file it comes from."""
    with (REPO / "babel.cfg").open() as fh:
        methods, options = parse_mapping_cfg(fh)  # type: ignore[no-untyped-call]
    keywords = dict(DEFAULT_KEYWORDS)
    found: dict[str | tuple[str, ...], str] = {}
    files = sorted(SERVING.rglob("*.py")) + sorted((SERVING / "templates").glob("*.html"))
    for path in files:
        relative = path.relative_to(REPO).as_posix()
        for pattern, method in methods:
            if pathmatch(pattern, relative):
                for message in extract_from_file(method, path, keywords=keywords, options=options.get(pattern, {})):
                    found.setdefault(message[1], relative)
                break
    return found


def catalogue() -> Any:
    with CATALOGUE.open("rb") as fh:
        return read_po(fh, locale="zh_CN", domain="messages")


def test_extraction_finds_the_templates_and_the_python() -> None:
    marked = marked_messages()
    sources = set(marked.values())
    assert "prescreen/serving/pages.py" in sources and "prescreen/serving/templates/base.html" in sources
    assert {"Sign in", "Claimed: the item is yours while you read it.", "Stat"} <= set(marked)
    assert ("%(num)s file", "%(num)s files") in marked  # a plural
    assert "Submitted by <strong>%(who)s</strong>" in marked  # a {% trans %} block


def test_every_marked_string_is_in_the_catalogue_and_nothing_stale() -> None:
    marked = marked_messages()
    ids = {m.id if isinstance(m.id, str) else tuple(m.id) for m in catalogue() if m.id}
    missing = {k: v for k, v in marked.items() if k not in ids}
    assert not missing, f"run `make i18n` and translate: {missing}"
    stale = ids - set(marked)
    assert not stale, f"no longer used (run `make i18n`): {stale}"


def test_every_message_has_a_chinese_translation_with_the_same_placeholders() -> None:
    cat = catalogue()
    assert cat.num_plurals == 1  # Chinese has one form
    assert not cat.fuzzy
    for message in cat:
        if not message.id:
            continue
        singular = message.id if isinstance(message.id, str) else message.id[0]
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(s and s.strip() for s in strings), f"no translation of {message.id!r}"
        assert not message.fuzzy, f"fuzzy: {message.id!r}"
        for string in strings:
            assert sorted(PLACEHOLDER.findall(string)) == sorted(PLACEHOLDER.findall(singular)), message.id
            words = PLACEHOLDER.sub("", string)
            assert re.search(r"[\u4e00-\u9fff]", words) or string != singular, f"still English: {string!r}"
    assert [(m.id, errors) for m, errors in cat.check() if errors] == []  # babel's own format checks


#: words a template may show as they are, in any language
UNTRANSLATED = {"prescreen", "AI", "PSI", "AUROC"}


def unmarked_words(source: str) -> list[str]:
    """Words (Latin or CJK) of a template's text and visible attributes outside ``{{ }}``, ``{% %}``
    and ``{% trans %}`` blocks: what a reader would see untranslated."""
    text = re.sub(r"{#.*?#}", "", source, flags=re.S)
    text = re.sub(r"{%-?\s*trans\b.*?{%-?\s*endtrans\s*-?%}", "", text, flags=re.S)
    text = re.sub(r"{%-?\s*block \w+_class\s*-?%}.*?{%-?\s*endblock\s*-?%}", "", text, flags=re.S)  # CSS classes
    text = re.sub(r"{{.*?}}|{%.*?%}", "", text, flags=re.S)
    text = re.sub(r"&#?\w+;", " ", text)
    shown = [*re.findall(r'\b(?:title|alt|aria-label|placeholder)="([^"]*)"', text), re.sub(r"<[^>]*>", " ", text)]
    words = [w for chunk in shown for w in re.findall(r"[A-Za-z][A-Za-z'-]+|[\u3400-\u9fff]+", chunk)]
    return [w for w in words if w not in UNTRANSLATED]


@pytest.mark.parametrize("template", sorted(p.name for p in (SERVING / "templates").glob("*.html")))
def test_every_word_of_a_template_is_marked(template: str) -> None:
    assert unmarked_words((SERVING / "templates" / template).read_text(encoding="utf-8")) == []


def test_an_unmarked_word_is_found() -> None:
    source = '<p title="Due">{{ _("Sign in") }} Hello {% trans %}Marked{% endtrans %} 你好 {# note #}</p>'
    assert unmarked_words(source) == ["Due", "Hello", "你好"]


def test_the_translations_are_read_from_the_po_file() -> None:
    zh = translations(Locale.ZH_CN)
    assert zh.gettext("Sign in") == "登录" and zh.gettext("Worklists") == "工作列表"
    assert zh.ngettext("%(num)s file", "%(num)s files", 3) == "%(num)s 个文件"
    assert zh.gettext("a string nobody marked") == "a string nobody marked"  # falls back to English
    assert translations(Locale.EN).gettext("Sign in") == "Sign in"
    assert translations(Locale.ZH_CN) is zh  # read once


# --- the language of a page ----------------------------------------------------------------


def test_pages_are_chinese_by_default(client: TestClient) -> None:
    page = client.get("/ui/login")
    assert page.status_code == 200
    html = page.text
    assert '<html lang="zh-CN">' in html and '<meta charset="utf-8">' in html
    assert "<title>登录 · prescreen</title>" in html and "用户名" in html and "密码" in html
    assert ">登录</button>" in html and "阅片室" in html
    assert "Sign in" not in html and "Password" not in html
    # the switch: the current language as text, the other one a link back to this page
    assert '<span class="lang-current" lang="zh-CN" aria-current="true">中文</span>' in html
    assert 'href="/ui/locale/en?next=/ui/login"' in html and ">English</a>" in html
    assert page.headers["content-type"] == "text/html; charset=utf-8"


def test_english_by_setting(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESCREEN_LOCALE", "en")
    get_settings.cache_clear()
    html = client.get("/ui/login").text
    assert '<html lang="en">' in html and ">Sign in</button>" in html and "登录" not in html
    assert 'href="/ui/locale/zh_CN?next=/ui/login"' in html and ">中文</a>" in html


def test_english_by_cookie_and_back(client: TestClient) -> None:
    client.cookies.set(LOCALE_COOKIE, "en")
    assert '<html lang="en">' in client.get("/ui/login").text
    client.cookies.set(LOCALE_COOKIE, "fr")  # not one of ours: the default
    assert '<html lang="zh-CN">' in client.get("/ui/login").text


def test_the_switch_sets_the_cookie_and_goes_back(client: TestClient) -> None:
    r = client.get("/ui/locale/en", params={"next": "/ui/items/abc?x=1"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/items/abc?x=1"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{LOCALE_COOKIE}=en;") and "Path=/ui/" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower() and "Max-Age=31536000" in cookie
    assert ">Sign in</button>" in client.get("/ui/login").text  # the client keeps the cookie
    r = client.get("/ui/locale/zh_CN", params={"next": "/ui/login"})
    assert r.headers["location"] == "/ui/login"
    assert ">登录</button>" in client.get("/ui/login").text
    # the page's own address (with its query) is where the switch comes back to
    html = client.get("/ui/login", params={"next": "/ui/items/x1"}).text
    assert 'href="/ui/locale/en?next=/ui/login%3Fnext%3D%252Fui%252Fitems%252Fx1"' in html


def test_an_unknown_language_is_404(client: TestClient) -> None:
    for code in ("fr", "zh-CN", "ZH_CN", "en_US", "%00"):
        r = client.get(f"/ui/locale/{code}")
        assert r.status_code == 404, code
        assert r.json()["error"] == "not_found" and LOCALE_COOKIE not in r.headers.get("set-cookie", "")


def test_the_switch_never_leaves_the_site(client: TestClient) -> None:
    for bad in ("https://evil.example/", "//evil.example/ui/", "/v1/models", "/ui//evil.example", "/ui\\x", "ui/"):
        r = client.get("/ui/locale/en", params={"next": bad})
        assert (r.status_code, r.headers["location"]) == (303, "/ui/"), bad
    assert client.get("/ui/locale/en").headers["location"] == "/ui/"  # no next: the worklists


def test_the_switch_route_is_public_and_named() -> None:
    from fastapi.routing import APIRoute

    (route,) = [r for r in pages_router.routes if isinstance(r, APIRoute) and r.path == "/ui/locale/{code}"]
    assert route.methods == {"GET"} and route.include_in_schema is False
    marks = {str(getattr(d.call, "permission", "")) for d in route.dependant.dependencies}
    assert "health" in marks


def test_languages_do_not_leak_between_concurrent_requests(client: TestClient) -> None:
    def fetch(locale: str) -> tuple[str, str]:
        with TestClient(client.app, follow_redirects=False) as own:
            own.cookies.set(LOCALE_COOKIE, locale)
            return locale, own.get("/ui/login").text

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(fetch, ["en", "zh_CN"] * 8))
    for locale, html in results:
        assert (">Sign in</button>" in html) == (locale == "en"), locale
        assert (">登录</button>" in html) == (locale == "zh_CN"), locale
    assert current().locale == Locale.ZH_CN  # nothing stays behind outside a request


def page_html(name: str, **context: Any) -> str:
    return bytes(render(name, **context).body).decode()


# --- a full page in each language ----------------------------------------------------------


def worklist_context() -> dict[str, Any]:
    now = datetime(2026, 11, 30, 3, 42, tzinfo=UTC)
    item = {
        "id": "item-1",
        "flagged": True,
        "effective_priority": "stat",
        "priority": "urgent",
        "seconds_to_due": 600,
        "escalation": 75,
        "modalities": ["ECG"],
        "task": "ecg-rhythm",
        "label": "af",
        "score": 0.93,
        "state": "claimed",
        "claimed_by": "u2",
        "claimed_by_name": "张三",
        "patient_name": "王^小明",
        "patient_id": "P-1",
        "institution": "北京协和医院",
        "received_at": now,
    }
    user = SimpleNamespace(id="u1", name="李伟", grade="associate_chief", specialties=["cardiology", "sonography"])
    return {"user": user, "worklists": [{"worklist": "cardiology", "items": [item], "total": 3}], "flash": None}


def test_the_worklists_in_chinese() -> None:
    with use_locale(Locale.ZH_CN, "/ui/"):
        html = page_html("worklists.html", **worklist_context())
    assert '<html lang="zh-CN">' in html and "<title>工作列表 · prescreen</title>" in html
    assert "李伟" in html and "副主任医师 · 心内科、超声科" in html and ">退出</button>" in html
    assert '<h2 id="wl-cardiology">心内科</h2>' in html and "3 项待处理" in html
    assert ">危急</span>" in html and "原为紧急" in html and "由 张三 处理" in html
    assert "王小明" in html and "北京协和医院" in html and "显示 3 项中最紧急的 1 项。" in html
    assert ">优先级</th>" in html and ">AI 结果</th>" in html and "列表每 15 秒自动刷新。" in html
    # the time: Shanghai (UTC+8) on the page, UTC in the attribute the script reads
    assert '<time datetime="2026-11-30T03:42:00+00:00" data-local>2026-11-30 11:42</time>' in html
    assert 'data-timezone="Asia/Shanghai"' in html and 'data-text-open="{count} 项待处理"' in html
    assert not re.search(r">\s*(Priority|Due in|Sign out|Stat|Cardiology|open)\s*<", html)


def test_the_worklists_in_english() -> None:
    with use_locale(Locale.EN, "/ui/"):
        html = page_html("worklists.html", **worklist_context())
    assert '<html lang="en">' in html and "<title>Worklists · prescreen</title>" in html
    assert "Associate chief · Cardiology, Sonography" in html and "3 open" in html and ">Stat</span>" in html
    assert "was Urgent" in html and "by 张三" in html and "王小明" in html  # a CJK name as it is
    assert 'href="/ui/locale/zh_CN?next=/ui/"' in html


def test_a_switch_in_the_header_of_a_signed_in_page() -> None:
    with use_locale(Locale.ZH_CN, "/ui/items/x?tab=1"):
        html = page_html("worklists.html", **worklist_context())
    header = html.split('<header class="topbar">')[1].split("</header>")[0]
    assert 'href="/ui/locale/en?next=/ui/items/x%3Ftab%3D1"' in header and "中文" in header


def shadow_context() -> dict[str, Any]:
    def share(value: float) -> dict[str, float | int]:
        return {"value": value, "ci_low": value - 0.1, "ci_high": min(1.0, value + 0.05), "n": 20}

    def side(model: str) -> dict[str, Any]:
        latency = {"latency_mean_s": 0.0123, "latency_p95_s": 0.05}
        return {"models": [model], "flag_rate": share(0.4), **latency, "accuracy": share(0.9)}

    comparison = {
        "shadow_model": "ecg:2",
        "n": 20,
        "labelled": 10,
        "first_at": datetime(2026, 11, 29, 16, 30, tzinfo=UTC),
        "last_at": datetime(2026, 11, 30, 2, 0, tzinfo=UTC),
        "agreement": share(0.95),
        "active": side("ecg:1"),
        "shadow": side("ecg:2"),
    }
    user = SimpleNamespace(id="u1", name="Li Wei", grade="chief", specialties=[])
    report = {"task": "ecg-rhythm", "active_model": "ecg:1", "shadow_model": None, "comparisons": [comparison]}
    return {"user": user, "report": report}


def test_the_shadow_page_in_both_languages() -> None:
    with use_locale(Locale.ZH_CN):
        html = page_html("shadow.html", **shadow_context())
    assert "<h1>影子模式：ecg-rhythm</h1>" in html and '在用模型：<strong id="active-model">ecg:1</strong>' in html
    assert '影子模型：<strong id="shadow-model">未开启</strong>' in html and "0.012 秒" in html
    assert "用 <code>prescreen models shadow ecg-rhythm 名称:版本</code> 开启，<code>--off</code> 关闭。" in html
    assert "时间 2026-11-30 00:30 至 2026-11-30 10:00" in html  # Shanghai time
    assert "括号内为 95% Wilson 置信区间。" in html
    with use_locale(Locale.EN):
        html = page_html("shadow.html", **shadow_context())
    assert "<h1>Shadow mode: ecg-rhythm</h1>" in html and 'Shadow model: <strong id="shadow-model">off</strong>' in html
    assert "Turn it on with <code>prescreen models shadow ecg-rhythm NAME:VERSION</code>, off with" in html
    assert "0.012 s" in html and "In brackets: the 95% Wilson interval." in html


# --- dates in the hospital's time zone -----------------------------------------------------


def test_dates_are_shown_in_shanghai_time() -> None:
    moment = datetime(2026, 11, 30, 3, 42, 59, tzinfo=UTC)
    assert local_time(moment) == "2026-11-30 11:42"
    assert local_time(moment.replace(tzinfo=None)) == "2026-11-30 11:42"  # naive: UTC, as SQLite keeps it
    assert local_time("2026-11-30T03:42:00+00:00") == "2026-11-30 11:42"
    assert local_time("2026-11-30 20:15:00") == "2026-12-01 04:15"  # past midnight in Shanghai
    assert local_time(moment.astimezone(timezone(timedelta(hours=-5)))) == "2026-11-30 11:42"  # any offset
    assert local_time(None) == "—"


def test_the_time_zone_setting_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    moment = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    zones = (("UTC", "2026-07-01 12:00"), ("Europe/London", "2026-07-01 13:00"), ("Asia/Urumqi", "2026-07-01 18:00"))
    for zone, shown in zones:
        monkeypatch.setenv("PRESCREEN_TIMEZONE", zone)
        get_settings.cache_clear()
        assert local_time(moment) == shown, zone


def test_a_bad_time_zone_or_language_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Settings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="unknown time zone"):
        Settings(timezone="../../etc/passwd")
    with pytest.raises(ValidationError):
        Settings(locale="fr")
    settings = Settings()
    assert (settings.locale, settings.timezone) == ("zh_CN", "Asia/Shanghai")
