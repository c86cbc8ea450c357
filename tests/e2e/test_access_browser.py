"""Access control end to end, in Chinese, against a real ``prescreen serve`` with the new defaults
(nothing anonymous, TOTP at every sign-in) and headless Chromium:

* a PACS client of clinic-7 sends an AF ECG of 张三丰 with its API key; the anonymous sender is refused;
* a reader of clinic-7 signs in for the first time, is sent to enrolment, scans (reads) the key,
  confirms a code; the worklist shows 张*丰, the item opened after the claim shows 张三丰;
* a reader of clinic-9 does not see the item;
* the auditor signs in with password and code, the audit page asks for the code again (step-up),
  then lists who opened the study; ``prescreen audit verify`` passes on the served trail.

Screenshots go to ``tmp_path``, and to ``docs/screenshots`` with ``PRESCREEN_SCREENSHOTS=1``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from tests.e2e.conftest import CLI, free_port, run_cli, serve_command, start_process, stop_process
from tests.e2e.test_pages_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, first_record, need_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.data]

PASSWORDS = {"liwei": "reads-ecgs-daily", "wangfang": "reads-at-clinic9", "chenjing": "audits-everything"}


def add(env: dict[str, str], *args: str, password: str) -> None:
    done = subprocess.run(
        [*CLI, "users", "add", *args, "--password-stdin"],
        input=password + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def wait_for_item(base: str, token: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = httpx.get(f"{base}/v1/worklists/cardiology", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert got.status_code == 200, got.text
        if got.json()["items"]:
            return dict(got.json()["items"][0])
        time.sleep(0.5)
    raise AssertionError("the client's study reached no cardiology worklist in time")


def test_clients_scope_masking_mfa_and_the_audit_page(
    shared_data: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **cli_env,
        "PRESCREEN_ANONYMOUS_PERMISSIONS": "",
        "PRESCREEN_MFA": "login",
        "PRESCREEN_LOCALE": "zh_CN",
        "PRESCREEN_DICOM_PORT": str(free_port()),
        "PRESCREEN_STUDY_QUIET_SECONDS": "1",
        "PRESCREEN_WORKER_POLL_SECONDS": "0.2",
    }
    reader = ["--role", "reader", "--grade", "attending", "--specialty", "cardiology"]
    add(env, "--name", "李伟", "--login", "liwei", *reader, "--institution", "clinic-7", password=PASSWORDS["liwei"])
    add(
        env,
        "--name",
        "王芳",
        "--login",
        "wangfang",
        *reader,
        "--institution",
        "clinic-9",
        password=PASSWORDS["wangfang"],
    )
    add(env, "--name", "陈静", "--login", "chenjing", "--role", "auditor", password=PASSWORDS["chenjing"])
    mixed = run_cli(
        "users", "add", "--name", "周波", "--login", "zhoubo", "--role", "admin", "--role", "auditor", env=env
    )
    assert mixed.returncode == 2 and "三员分立" in mixed.stderr
    added = run_cli("clients", "add", "--name", "pacs-clinic7", "--institution", "clinic-7", env=env)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    log = tmp_path / "serve.log"
    proc = start_process(serve_command(port), env, log, f"{base}/readyz")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        record = first_record(shared_data, "A")
        files = [
            ("file", (f"{record}.{ext}", (shared_data / "cinc2017" / f"{record}.{ext}").read_bytes()))
            for ext in ("hea", "dat")
        ]
        form = {"patient_name": "张三丰", "patient_id": "P00012345", "institution": "somewhere-else"}
        assert httpx.post(f"{base}/v1/studies", files=files, data=form, timeout=30).status_code == 401
        sent = httpx.post(
            f"{base}/v1/studies", files=files, data=form, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert sent.status_code == 202, sent.text
        study = httpx.get(f"{base}/v1/studies/{sent.json()['study_id']}", headers={"Authorization": f"Bearer {key}"})
        assert study.json()["institution"] == "clinic-7"  # the client's, not what the form claimed

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
                page = context.new_page()
                page.set_default_timeout(30_000)

                def sign_in(login: str, code: str | None = None) -> None:
                    page.goto(f"{base}/ui/login")
                    page.fill("#login", login)
                    page.fill("#password", PASSWORDS[login])
                    if code:
                        page.fill("#totp", code)
                    page.click("button[type=submit]")
                    page.wait_for_load_state()

                def enrol() -> str:
                    assert "/ui/mfa" in page.url
                    page.click("#mfa-start")
                    secret = page.locator("#totp-secret").inner_text()
                    page.fill("#code", pyotp.TOTP(secret).now())
                    page.click("#mfa-confirm")
                    # count() does not wait: right after the click the new page may not be parsed yet
                    expect(page.locator("#recovery-codes li")).to_have_count(10)
                    page.click("#mfa-continue")
                    page.wait_for_load_state()
                    return secret

                # first sign-in of the reader: enrolment, then the worklist with the masked name
                sign_in("liwei")
                liwei_secret = enrol()
                assert page.locator("html").get_attribute("lang") == "zh-CN"
                token = httpx.post(
                    f"{base}/v1/auth/token",
                    data={"username": "liwei", "password": PASSWORDS["liwei"], "totp": pyotp.TOTP(liwei_secret).now()},
                    timeout=30,
                ).json()["access_token"]
                item = wait_for_item(base, token)
                page.goto(f"{base}/ui/")
                row = page.locator(f'tr[data-item-id="{item["id"]}"]')
                row.wait_for()
                assert "张*丰" in row.inner_text() and "张三丰" not in page.content()
                page.screenshot(path=str(shots / "worklist-zh.png"), full_page=True)
                row.locator("a.open-link").click()
                page.wait_for_url(f"{base}/ui/items/{item['id']}")
                page.click("#action-claim")
                page.wait_for_selector(".flash-ok")
                page.wait_for_load_state()  # content() does not wait for the rest of the page
                assert "张三丰" in page.content()  # the claimant sees the patient in full
                page.screenshot(path=str(shots / "item-zh.png"), full_page=True)
                page.click("#logout")

                # a reader of clinic-9 does not see clinic-7's item
                other = httpx.post(
                    f"{base}/v1/auth/token", data={"username": "wangfang", "password": PASSWORDS["wangfang"]}
                ).json()
                assert other["scope"] == "enrol"  # login mode, not enrolled: may only enrol
                assert (
                    httpx.get(
                        f"{base}/v1/worklists/cardiology", headers={"Authorization": f"Bearer {other['access_token']}"}
                    ).status_code
                    == 403
                )

                # the auditor: enrols, signs in again with the code, steps up on the audit page
                sign_in("chenjing")
                secret = enrol()
                page.click("#logout")
                sign_in("chenjing", pyotp.TOTP(secret).now())
                page.goto(f"{base}/ui/audit?user=liwei")
                if "/ui/step-up" in page.url:  # the sign-in's code counts; past 5 minutes the dialog asks again
                    page.fill("#code", pyotp.TOTP(secret).now())
                    page.click("#step-up-submit")
                    page.wait_for_url(re.compile(r".*/ui/audit.*"))
                table = page.locator(".audit-table").inner_text()
                assert "item-read" in table and "item-claim" in table and "sign-in" in table
                assert "张三丰" not in page.content() and "P00012345" not in page.content()
                page.screenshot(path=str(shots / "audit.png"), full_page=True)
            finally:
                browser.close()
    finally:
        stop_process(proc)
    verified = run_cli("audit", "verify", env=env)
    assert verified.returncode == 0 and "ok:" in verified.stdout, verified.stdout + verified.stderr
    if os.environ.get("PRESCREEN_SCREENSHOTS") == "1":
        for shot in ("worklist-zh.png", "item-zh.png", "audit.png"):
            shutil.copy(shots / shot, SCREENSHOTS / shot)
