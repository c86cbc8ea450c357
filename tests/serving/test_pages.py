"""The readers' pages (``/ui``) in-process: sign in and out, the worklists, an item, the review
actions through the forms, and the preview PNGs of DICOM images and ECGs."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from prescreen.config import get_settings
from prescreen.serving.account import auth_router
from prescreen.serving.auth import SESSION_COOKIE
from prescreen.serving.errors import install_error_handlers
from prescreen.serving.pages import pages_router
from prescreen.serving.previews import ecg_png, pick_leads
from prescreen.serving.worklists import worklists_router
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.schema_triage import WorklistItem
from prescreen.store.users import add_user

PASSWORD = "correct horse battery"
#: an ECG preview is 270 mm wide (15 mm margin, 10 s at 25 mm/s, 5 mm) at 130 dpi, whatever the record
ECG_PNG_WIDTH = 1381


@dataclass
class Site:
    app: FastAPI
    ingestor: Ingestor

    def client(self) -> TestClient:
        return TestClient(self.app, follow_redirects=False)

    def signed_in(self, login: str) -> TestClient:
        client = self.client()
        r = client.post("/ui/login", data={"login": login, "password": PASSWORD})
        assert r.status_code == 303, r.text
        return client


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """The pages in English (their words are asserted below; Chinese, the default, in test_i18n and
    ``test_an_item_in_chinese``)."""
    monkeypatch.setenv("PRESCREEN_LOCALE", "en")
    get_settings.cache_clear()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    app = FastAPI()
    for router in (pages_router, auth_router, worklists_router):
        app.include_router(router)
    install_error_handlers(app)
    ingestor = Ingestor(session_factory(make_engine(url)), FileBlobStore(tmp_path / "blobs"))
    app.state.ingestor = ingestor
    users = (
        ("liwei", "Li Wei", "attending", ["cardiology"]),
        ("zhangsan", "Zhang San", "associate_chief", ["cardiology"]),
        ("mary", "Mary Sono", "attending", ["sonography"]),
    )
    for login, name, grade, specialties in users:
        add_user(ingestor.sessions, login=login, name=name, password=PASSWORD, grade=grade, specialties=specialties)
    yield Site(app, ingestor)


def wfdb_files(folder: Path, name: str = "rec1", seconds: float = 12.0, fs: int = 300) -> dict[str, bytes]:
    """A tiny synthetic single-lead record (a spike every 0.8 s), written with ``wfdb.wrsamp``."""
    t = np.arange(int(seconds * fs)) / fs
    signal = 0.05 * np.sin(2 * np.pi * 0.3 * t)
    signal[(np.arange(t.size) % int(0.8 * fs)) < 3] += 1.2
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"], sig_name=["II"], p_signal=signal[:, None], fmt=["16"], write_dir=str(folder))
    return {f"{name}.{ext}": (folder / f"{name}.{ext}").read_bytes() for ext in ("hea", "dat")}


def dicom_image(frames: int = 1, size: int = 64) -> bytes:
    """A 12-bit MONOCHROME2 image with a window (center 1000, width 400) and a ramp of values."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "OT", "PID-7", "Doe^Jane"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1000, 400
    ramp = np.tile(np.linspace(0, 2000, size, dtype=np.uint16), (size, 1))
    pixels = np.stack([ramp if i == 0 else np.full_like(ramp, 2000) for i in range(frames)])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def add_item(
    site: Site,
    study_id: str,
    worklist: str = "cardiology",
    *,
    priority: str = "stat",
    due_in: timedelta = timedelta(minutes=20),
    label: str | None = "af",
    score: float | None = 0.93,
    escalation: int = 0,
) -> str:
    now = datetime.now(UTC)
    with site.ingestor.sessions.begin() as session:
        item = WorklistItem(
            study_id=study_id,
            worklist=worklist,
            priority=priority,
            rule="test",
            task="ecg-rhythm" if label else None,
            label=label,
            flagged=label not in (None, "normal"),
            score=score,
            received_at=now - timedelta(minutes=10),
            due_at=now + due_in,
            escalation=escalation,
        )
        session.add(item)
        session.flush()
        return item.id


def ecg_item(site: Site, tmp_path: Path, worklist: str = "cardiology", **kwargs: object) -> tuple[str, str]:
    """A WFDB upload in a worklist; returns (item id, series UID)."""
    received = site.ingestor.store_upload(wfdb_files(tmp_path / f"wfdb-{worklist}"), patient_name="Roe^Richard")
    return add_item(site, received[0].study_id, worklist, **kwargs), received[0].series_uid  # type: ignore[arg-type]


def png_of(response_content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(response_content))
    image.load()
    return image


# --- signing in ----------------------------------------------------------------------------


def test_pages_redirect_to_login_without_a_session(site: Site) -> None:
    client = site.client()
    r = client.get("/ui/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/"
    r = client.get("/ui/items/abc")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/items/abc"
    for fragment in ("/ui/items/abc/series/1.2.png", "/ui/worklists/cardiology/rows"):  # no redirect for these
        r = client.get(fragment)
        assert (r.status_code, r.headers["content-type"], r.text) == (401, "text/plain; charset=utf-8", "sign in again")
    r = client.get("/ui/login")
    assert r.status_code == 200 and 'name="password"' in r.text and 'type="password"' in r.text


def test_login_sets_an_httponly_strict_cookie(site: Site) -> None:
    client = site.client()
    r = client.post("/ui/login", data={"login": "LiWei", "password": PASSWORD, "next": "/ui/"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP in the test; set under HTTPS
    page = client.get("/ui/")
    assert page.status_code == 200 and "Li Wei" in page.text and "Cardiology" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # the API takes bearer tokens only: the page's cookie alone opens no /v1 route (CSRF)
    me = client.get("/v1/auth/me")
    assert me.status_code == 401, me.text


def test_wrong_password_shows_the_form_again_with_401(site: Site) -> None:
    client = site.client()
    for login, password in (("liwei", "wrong password"), ("nobody", PASSWORD), ("", "")):
        r = client.post("/ui/login", data={"login": login, "password": password})
        assert r.status_code == 401
        assert "wrong login, password or code" in r.text and 'id="login"' in r.text
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_login_goes_back_to_next_but_never_elsewhere(site: Site) -> None:
    client = site.client()
    r = client.post("/ui/login", data={"login": "liwei", "password": PASSWORD, "next": "/ui/items/x1"})
    assert r.headers["location"] == "/ui/items/x1"
    for bad in ("//evil.example/ui/", "https://evil.example/", "/v1/../ui/", "/ui//evil.example"):
        r = client.post("/ui/login", data={"login": "liwei", "password": PASSWORD, "next": bad})
        assert r.headers["location"] == "/ui/", bad


def test_a_forged_or_stale_cookie_leads_to_the_login_form(site: Site) -> None:
    client = site.client()
    client.cookies.set(SESSION_COOKIE, "not.a.token")
    r = client.get("/ui/")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert SESSION_COOKIE in r.headers["set-cookie"]  # the stale cookie is dropped
    assert client.get("/ui/login").status_code == 200  # and the login form still opens


def test_logout_clears_the_cookie(site: Site) -> None:
    client = site.signed_in("liwei")
    r = client.post("/ui/logout")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert f'{SESSION_COOKIE}=""' in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    assert client.get("/ui/").status_code == 303


# --- worklists and items -------------------------------------------------------------------


def test_worklist_most_urgent_first_with_countdown_and_marks(site: Site, tmp_path: Path) -> None:
    routine, _ = ecg_item(
        site, tmp_path / "a", priority="routine", due_in=timedelta(hours=3), label="normal", score=0.1
    )
    overdue, _ = ecg_item(site, tmp_path / "b", priority="urgent", due_in=timedelta(minutes=-5), escalation=100)
    client = site.signed_in("liwei")
    page = client.get("/ui/").text
    assert page.index(overdue) < page.index(routine)
    assert 'data-due-in="-3' in page  # about -300 s
    assert "overdue" not in page.split(overdue)[0][-50:]  # the server renders the number; the script words it
    assert 'class="esc esc-100"' in page and "100 %" in page
    assert "item-row is-flagged" in page and "⚑" in page
    assert "R**, R******" in page and "Richard" not in page and "2 open" in page  # masked in the list
    assert 'data-refresh="/ui/worklists/cardiology/rows"' in page
    rows = client.get("/ui/worklists/cardiology/rows")
    assert rows.status_code == 200 and rows.headers["x-total"] == "2" and overdue in rows.text
    assert "<html" not in rows.text


def test_a_reader_sees_no_other_specialty(site: Site, tmp_path: Path) -> None:
    item, series = ecg_item(site, tmp_path)
    client = site.signed_in("mary")  # sonography
    page = client.get("/ui/")
    assert page.status_code == 200 and "Sonography" in page.text and item not in page.text
    r = client.get(f"/ui/items/{item}")
    assert r.status_code == 403 and "cardiology" in r.text and "<html" in r.text
    not_mine = {"error": "forbidden", "detail": "worklist 'cardiology' is not among your specialties (sonography)"}
    for fragment in (f"/ui/items/{item}/series/{series}.png", "/ui/worklists/cardiology/rows"):
        r = client.get(fragment)
        assert (r.status_code, r.json()) == (403, not_mine)
    r = client.post(f"/ui/items/{item}/claim")
    assert r.status_code == 303 and "prescreen_flash" in r.headers["set-cookie"]
    assert "not among your specialties" in client.get(f"/ui/items/{item}").text  # (the 403 page)


def test_unknown_item_is_a_404_page(site: Site) -> None:
    r = site.signed_in("liwei").get("/ui/items/nope")
    assert r.status_code == 404 and "Not found" in r.text


def test_review_through_the_forms(site: Site, tmp_path: Path) -> None:
    item, series = ecg_item(site, tmp_path)
    liwei, zhang = site.signed_in("liwei"), site.signed_in("zhangsan")
    page = liwei.get(f"/ui/items/{item}").text
    assert 'id="action-claim"' in page and f"/ui/items/{item}/series/{series}.png" in page
    assert 'data-state="unread"' in page

    r = liwei.post(f"/ui/items/{item}/claim")
    assert r.status_code == 303 and r.headers["location"] == f"/ui/items/{item}"
    page = liwei.get(f"/ui/items/{item}").text
    assert "Claimed: the item is yours" in page and 'id="report-text"' in page and 'id="action-release"' in page
    assert "Claimed: the item is yours" not in liwei.get(f"/ui/items/{item}").text

    # someone else's claim: refused, with the reason on the page
    zhang.post(f"/ui/items/{item}/claim")
    assert "claimed by" in zhang.get(f"/ui/items/{item}").text

    liwei.post(f"/ui/items/{item}/draft", data={"text": "Atrial fibrillation.\r\nRate 110.", "ai_agrees": "yes"})
    page = liwei.get(f"/ui/items/{item}").text
    assert "Draft saved." in page and "Atrial fibrillation.\nRate 110.</textarea>" in page and "checked" in page
    liwei.post(
        f"/ui/items/{item}/sign",
        data={"text": "Atrial fibrillation, rate 110.", "ai_agrees": "yes", "physician_label": "af"},
    )
    page = liwei.get(f"/ui/items/{item}").text
    assert "Signed and submitted for review." in page and 'data-state="awaiting_review"' in page
    assert "Submitted by <strong>Li Wei</strong>" in page

    # the first reader may not co-sign: no button, and a forged POST is refused
    assert 'id="action-cosign"' not in page
    liwei.post(f"/ui/items/{item}/sign")
    assert "may not co-sign their own report" in liwei.get(f"/ui/items/{item}").text

    zhang.post(f"/ui/items/{item}/return", data={"comment": "  "})
    assert "write a comment" in zhang.get(f"/ui/items/{item}").text
    page = zhang.get(f"/ui/items/{item}").text
    assert 'id="action-cosign"' in page and 'id="action-return"' in page
    zhang.post(f"/ui/items/{item}/sign")
    page = zhang.get(f"/ui/items/{item}").text
    assert "Co-signed: the report is final." in page and 'data-state="final"' in page
    assert "Co-signed by <strong>Zhang San</strong>" in page and 'id="action-amend"' in page
    assert item not in zhang.get("/ui/").text and item not in liwei.get("/ui/").text
    history = re.findall(r'<td data-action="(\w+)">([^<]+)</td>', page)
    assert history == [
        ("claim", "Claimed"),
        ("draft", "Saved draft"),
        ("draft", "Saved draft"),  # signing saved the changed text first
        ("sign", "Signed, submitted for review"),
        ("sign", "Co-signed"),
    ]


def test_unknown_action_is_404(site: Site, tmp_path: Path) -> None:
    item, _ = ecg_item(site, tmp_path)
    r = site.signed_in("liwei").post(f"/ui/items/{item}/delete")
    assert (r.status_code, r.json()) == (
        404,
        {"error": "not_found", "detail": "no action 'delete'; one of claim, release, draft, sign, return, amend"},
    )


# --- preview PNGs --------------------------------------------------------------------------


def test_png_of_a_wfdb_ecg(site: Site, tmp_path: Path) -> None:
    item, series = ecg_item(site, tmp_path)
    client = site.signed_in("liwei")
    r = client.get(f"/ui/items/{item}/series/{series}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = png_of(r.content)
    assert image.width == ECG_PNG_WIDTH and image.height > 150  # the height follows the trace's amplitude
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    pink = (pixels[..., 0] > 200) & (pixels[..., 1] < 215) & (pixels[..., 0] - pixels[..., 1] > 25)
    dark = pixels.sum(axis=2) < 150
    assert pink.mean() > 0.05 and dark.mean() > 0.003  # a grid, and a trace on it
    again = client.get(f"/ui/items/{item}/series/{series}.png", headers={"If-None-Match": r.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")


def test_png_of_the_real_cinc_record(site: Site, shared_data: Path) -> None:
    files = {f"A00001.{ext}": (shared_data / "cinc2017" / f"A00001.{ext}").read_bytes() for ext in ("hea", "dat")}
    received = site.ingestor.store_upload(files)
    item = add_item(site, received[0].study_id)
    r = site.signed_in("liwei").get(f"/ui/items/{item}/series/{received[0].series_uid}.png")
    assert r.status_code == 200 and png_of(r.content).width == ECG_PNG_WIDTH


def test_png_of_a_dicom_image_is_windowed(site: Site) -> None:
    stored = site.ingestor.store_dicom(dicom_image())
    item = add_item(site, stored.study_id)
    r = site.signed_in("liwei").get(f"/ui/items/{item}/series/{stored.series_uid}.png")
    assert r.status_code == 200
    image = png_of(r.content)
    assert image.size == (64, 64) and image.mode == "L"
    row = np.asarray(image)[0]
    # the ramp runs 0..2000; the window 800..1200 maps to black..white: a third of each side saturates
    assert (row[:20] == 0).all() and (row[-20:] == 255).all() and 0 < row[32] < 255


def test_png_of_a_multiframe_image_shows_the_first_frame(site: Site) -> None:
    stored = site.ingestor.store_dicom(dicom_image(frames=3))
    item = add_item(site, stored.study_id)
    r = site.signed_in("liwei").get(f"/ui/items/{item}/series/{stored.series_uid}.png")
    row = np.asarray(png_of(r.content))[0]
    assert row[0] == 0 and row[-1] == 255  # the ramp of frame 0, not the flat frames after it


def test_png_of_a_dicom_ecg(site: Site) -> None:
    stored = site.ingestor.store_dicom(Path(get_testdata_file("waveform_ecg.dcm")).read_bytes())
    item = add_item(site, stored.study_id)
    r = site.signed_in("liwei").get(f"/ui/items/{item}/series/{stored.series_uid}.png")
    assert r.status_code == 200 and png_of(r.content).width == ECG_PNG_WIDTH  # 12 leads: I and II, same width


def test_png_of_something_unreadable_says_why(site: Site) -> None:
    received = site.ingestor.store_upload({"notes.txt": b"not an image"})
    item = add_item(site, received[0].study_id)
    client = site.signed_in("liwei")
    r = client.get(f"/ui/items/{item}/series/{received[0].series_uid}.png")
    assert r.status_code == 422 and r.headers["content-type"] == "image/png" and png_of(r.content).width > 0
    r = client.get(f"/ui/items/{item}/series/1.2.3.png")
    assert (r.status_code, r.json()) == (404, {"error": "not_found", "detail": "no such series in this study"})


def test_twelve_lead_ecg_shows_leads_one_and_two() -> None:
    names = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert pick_leads(names) == [0, 1]
    assert pick_leads(("V5", "II", "x", "I")) == [3, 1]
    assert pick_leads(("MLII", "V5")) == [0, 1]
    from prescreen.datasets.ecg import EcgRecord

    short = EcgRecord(signal=np.zeros((1, 300), dtype=np.float32), fs=300.0, lead_names=("II",))
    assert png_of(ecg_png(short)).width == ECG_PNG_WIDTH  # shorter than 10 s: drawn as far as it goes


# --- static files and the route audit ------------------------------------------------------


def test_static_files_are_an_allow_list(site: Site) -> None:
    client = site.client()
    css = client.get("/ui/static/app.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    for name in ("pages.py", "login.html", "app.css.bak"):
        r = client.get(f"/ui/static/{name}")
        assert (r.status_code, r.json()) == (404, {"error": "not_found", "detail": f"no static file '{name}'"}), name
    r = client.get("/ui/static/..%2Fpages.py")  # normalised to /ui/pages.py: no such route
    assert (r.status_code, r.json()) == (404, {"error": "not_found", "detail": "Not Found"})


def test_every_page_route_names_its_permission() -> None:
    from fastapi.routing import APIRoute

    def permissions(dependant: object) -> set[str]:
        found: set[str] = set()
        for dep in getattr(dependant, "dependencies", []):
            marked = getattr(dep.call, "permission", None)
            if marked is not None:
                found.add(str(marked))
            found |= permissions(dep)
        return found

    routes = [r for r in pages_router.routes if isinstance(r, APIRoute)]
    assert len(routes) == 10  # every page route is checked (update when adding or removing one)
    for route in routes:
        assert permissions(route.dependant), route.path
        assert route.include_in_schema is False


def test_signing_unchanged_text_saves_no_new_draft(site: Site, tmp_path: Path) -> None:
    item, _ = ecg_item(site, tmp_path)
    liwei = site.signed_in("liwei")
    liwei.post(f"/ui/items/{item}/claim")
    liwei.post(f"/ui/items/{item}/draft", data={"text": "Sinus rhythm.", "physician_label": "normal"})
    liwei.post(f"/ui/items/{item}/sign", data={"text": "Sinus rhythm.", "physician_label": "normal"})
    page = liwei.get(f"/ui/items/{item}").text
    assert 'data-state="awaiting_review"' in page and "AI: disagrees" in page
    assert re.findall(r'<td data-action="(\w+)">', page) == ["claim", "draft", "sign"]


def test_a_form_posted_from_another_site_is_refused(site: Site, tmp_path: Path) -> None:
    """CSRF: a page on another port of the same host posts a claim with the reader's cookie."""
    item, _ = ecg_item(site, tmp_path)
    liwei = site.signed_in("liwei")
    for header in ({"Origin": "http://127.0.0.1:8666"}, {"Referer": "http://evil.example/page"}, {"Origin": "null"}):
        evil = liwei.post(f"/ui/items/{item}/claim", headers=header)
        assert evil.status_code == 403, (header, evil.text)
    assert 'data-state="unread"' in liwei.get(f"/ui/items/{item}").text  # nothing happened
    own = liwei.post(f"/ui/items/{item}/claim", headers={"Origin": "http://testserver"})
    assert own.status_code == 303, own.text
    assert 'data-state="claimed"' in liwei.get(f"/ui/items/{item}").text


def test_an_item_in_chinese(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default language: the worklist, an item, the actions' messages and the history in Chinese;
    the switch turns the same session to English."""
    monkeypatch.setenv("PRESCREEN_LOCALE", "zh_CN")
    get_settings.cache_clear()
    item, _ = ecg_item(site, tmp_path)
    liwei = site.signed_in("liwei")
    page = liwei.get("/ui/").text
    assert '<html lang="zh-CN">' in page and ">心内科</h2>" in page and "1 项待处理" in page and ">危急</span>" in page
    page = liwei.get(f"/ui/items/{item}").text
    assert ">认领</button>" in page and ">AI 结果</h2>" in page and "患者 " in page and "· 2 个文件" in page
    liwei.post(f"/ui/items/{item}/claim")
    page = liwei.get(f"/ui/items/{item}").text
    assert "已认领：阅片期间此项目归您处理。" in page and ">保存草稿</button>" in page
    assert ">签发并提交复核</button>" in page
    liwei.post(f"/ui/items/{item}/return", data={"comment": "  "})  # a message of the pages: translated
    assert "请填写给初读医师的意见" in liwei.get(f"/ui/items/{item}").text
    liwei.post(f"/ui/items/{item}/sign", data={"text": "心房颤动。", "ai_agrees": "yes", "physician_label": "af"})
    page = liwei.get(f"/ui/items/{item}").text
    assert "已签发并提交复核。" in page and "<strong>Li Wei</strong> 签发提交" in page and "AI：同意" in page
    assert "心房颤动。" in page
    history = re.findall(r'<td data-action="(\w+)">([^<]+)</td>', page)
    assert history == [("claim", "已认领"), ("draft", "保存草稿"), ("sign", "已签发，提交复核")]
    r = liwei.get("/ui/items/nope")
    assert r.status_code == 404 and "<title>未找到 · prescreen</title>" in r.text

    switched = liwei.get("/ui/locale/en", params={"next": f"/ui/items/{item}"})
    assert switched.status_code == 303 and switched.headers["location"] == f"/ui/items/{item}"
    page = liwei.get(f"/ui/items/{item}").text
    assert '<html lang="en">' in page and "Signed, submitted for review" in page and "AI: agrees" in page
