"""The second-factor and audit pages in-process: first sign-in in ``login`` mode goes to enrolment,
the QR code and recovery codes, the step-up dialog before amending or reading the audit trail, the
auditor's search, and masking of the patient in the list but not for the claimant."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from prescreen.config import get_settings
from prescreen.serving.account_pages import account_pages_router
from prescreen.serving.errors import install_error_handlers
from prescreen.serving.pages import pages_router
from prescreen.store.audit import AuditQuery, search
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.users import add_user

PASSWORD = "correct horse battery"


@dataclass
class Site:
    app: FastAPI
    ingestor: Ingestor

    def client(self) -> TestClient:
        return TestClient(self.app, follow_redirects=False)

    def sign_in(self, login: str, code: str | None = None) -> tuple[TestClient, str]:
        client = self.client()
        data = {"login": login, "password": PASSWORD, **({"totp": code} if code else {})}
        r = client.post("/ui/login", data=data)
        assert r.status_code == 303, r.text
        return client, r.headers["location"]

    def enrol(self, client: TestClient) -> str:
        page = client.post("/ui/mfa/enroll", data={"next": "/ui/"})
        assert page.status_code == 200 and "<svg" in page.text
        secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text)
        assert secret is not None
        done = client.post("/ui/mfa/confirm", data={"code": pyotp.TOTP(secret.group(1)).now(), "next": "/ui/"})
        assert done.status_code == 200 and 'id="recovery-codes"' in done.text
        assert len(re.findall(r"<li><code>[a-z0-9]{5}-[a-z0-9]{5}</code></li>", done.text)) == 10
        return secret.group(1)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("PRESCREEN_LOCALE", "en")
    get_settings.cache_clear()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    app = FastAPI()
    for router in (pages_router, account_pages_router):
        app.include_router(router)
    install_error_handlers(app)
    ingestor = Ingestor(session_factory(make_engine(url)), FileBlobStore(tmp_path / "blobs"))
    app.state.ingestor = ingestor
    add_user(
        ingestor.sessions,
        login="liwei",
        name="Li Wei",
        password=PASSWORD,
        grade="attending",
        specialties=["cardiology"],
    )
    add_user(ingestor.sessions, login="chenjing", name="Chen Jing", password=PASSWORD, roles=["auditor"])
    yield Site(app, ingestor)


def test_login_mode_sends_a_new_user_to_enrolment_and_then_asks_for_the_code(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESCREEN_MFA", "login")
    get_settings.cache_clear()
    client, where = site.sign_in("liwei")
    assert where == "/ui/mfa?next=/ui/"
    assert client.get("/ui/").status_code == 403  # the enrolment-only session reads nothing
    assert client.get("/ui/mfa").status_code == 200
    secret = site.enrol(client)
    assert client.get("/ui/").status_code == 200  # the confirmed session is a full one
    # from now on the password alone is not enough
    refused = site.client().post("/ui/login", data={"login": "liwei", "password": PASSWORD})
    assert refused.status_code == 401 and "enter the code from your authenticator app" in refused.text
    assert 'id="totp"' in refused.text and "required autofocus" in refused.text
    # the code just spent confirming the enrolment still signs in once: a code is single-use per purpose
    _, where = site.sign_in("liwei", pyotp.TOTP(secret).now())
    assert where == "/ui/"


def test_the_auditor_steps_up_then_searches_and_the_search_is_recorded(site: Site) -> None:
    reader, _ = site.sign_in("liwei")
    reader.post("/ui/logout")
    auditor, where = site.sign_in("chenjing")
    assert where == "/ui/audit"  # an auditor has no worklists: the audit page is home
    first = auditor.get("/ui/audit?user=liwei")
    assert first.status_code == 303 and first.headers["location"].startswith("/ui/step-up?next=/ui/audit")
    site.enrol(auditor)  # confirming the enrolment is a second factor given now
    page = auditor.get("/ui/audit?user=liwei")
    assert page.status_code == 200
    assert "sign-in" in page.text and "sign-out" in page.text and "Li Wei" not in page.text
    with site.ingestor.sessions() as session:
        reads, _total = search(session, AuditQuery(actor="chenjing", event="audit-read"))
    assert reads and '"actor":"liwei"' in reads[0].detail


def test_a_wrong_step_up_code_shows_the_dialog_again_with_401(site: Site) -> None:
    auditor, _ = site.sign_in("chenjing")
    site.enrol(auditor)
    wrong = auditor.post("/ui/step-up", data={"code": "000000", "next": "/ui/audit"})
    assert wrong.status_code == 401 and "wrong or already used code" in wrong.text


def test_a_reader_may_not_open_the_audit_page(site: Site) -> None:
    reader, _ = site.sign_in("liwei")
    assert reader.get("/ui/audit").status_code == 403


def test_a_cross_site_step_up_post_is_refused(site: Site) -> None:
    auditor, _ = site.sign_in("chenjing")
    r = auditor.post("/ui/step-up", data={"code": "123456"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
