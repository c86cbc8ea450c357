"""SM2 signatures of reports (``prescreen.store.signing``) made inside the readers' own ``sign``
actions (``prescreen.store.reading.act``), on SQLite and PostgreSQL (``sessions``): the signed
report with both signatures, verified by OpenSSL; ``verify_study`` before and after the report text
is changed behind the application's back; the physicians' private keys sealed; the canonical form.
The REST route ``GET /v1/worklist-items/{id}/report/{version}`` on an in-process app."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import get_settings
from prescreen.errors import KeyFileError, NotFoundError
from prescreen.security import envelope
from prescreen.security.keyring import keyring_for
from prescreen.security.sm import SM2_USER_ID, Sm2Signer
from prescreen.serving.app import create_app
from prescreen.store import users as users_module
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor
from prescreen.store.reading import DraftText, act
from prescreen.store.schema import Study
from prescreen.store.schema_security import SigningKey
from prescreen.store.schema_triage import Report, WorklistItem
from prescreen.store.signing import signed_report, verify_study
from prescreen.store.users import Principal, add_user
from tests.serving.test_worklists_api import PASSWORD, READERS, Api, submit
from tests.store.test_worklist import LEASE, ecg, finalize, one_item, reader, screen_study, triage

Sessions = sessionmaker[Session]
TEXT = "Atrial fibrillation, rate 130/min; 房颤。"
PATIENT_NAME = "张三丰"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_module, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def ann(sessions: Sessions) -> Principal:
    return reader(sessions, "ann.attending", "attending")


@pytest.fixture
def cy(sessions: Sessions) -> Principal:
    return reader(sessions, "cy.assoc", "associate_chief")


def _af_item(sessions: Sessions, blobs: FileBlobStore) -> tuple[str, str]:
    """An unread cardiology item of a study with a patient name; (item id, study UID)."""
    study_id = screen_study(sessions, blobs, ecg("af", 0.93))
    assert triage(sessions) == 1
    with sessions.begin() as session:
        session.execute(update(Study).where(Study.id == study_id).values(patient_name=PATIENT_NAME))
        uid = session.get(Study, study_id).study_uid  # type: ignore[union-attr]
    return one_item(sessions, study_id).id, uid


@pytest.fixture
def signed_item(sessions: Sessions, blobs: FileBlobStore, ann: Principal, cy: Principal) -> tuple[str, str]:
    """(item id, study UID) of a report submitted by ann and co-signed by cy."""
    item_id, uid = _af_item(sessions, blobs)
    finalize(sessions, item_id, ann, cy, text=TEXT)
    return item_id, uid


def _openssl_verify(
    folder: Path, public_pem: str, message: bytes, signature: bytes
) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pub.pem").write_text(public_pem)
    (folder / "msg").write_bytes(message)
    (folder / "sig.der").write_bytes(signature)
    return subprocess.run(
        [
            "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-digest", "sm3",
            "-in", "msg", "-sigfile", "sig.der", "-pkeyopt", f"distid:{SM2_USER_ID.decode()}",
        ],
        cwd=folder, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_signed_report_has_the_canonical_form_and_both_signatures(
    sessions: Sessions, signed_item: tuple[str, str], ann: Principal, cy: Principal
) -> None:
    item_id, uid = signed_item
    with sessions() as session:
        doc = signed_report(session, item_id, 1)
        keys = {k.user_id: k for k in session.scalars(select(SigningKey))}
    assert (doc["item_id"], doc["study_uid"], doc["version"], doc["status"]) == (item_id, uid, 1, "final")
    assert [(s["signer"], s["role"]) for s in doc["signatures"]] == [
        ("ann.attending", "first_reader"),
        ("cy.assoc", "cosigner"),
    ]
    assert set(keys) == {ann.id, cy.id}
    for signature, user in zip(doc["signatures"], (ann, cy), strict=True):
        assert signature["public_key"] == keys[user.id].public_pem
        assert signature["key_id"] == keys[user.id].key_id
        assert signature["signed_at"].endswith("+00:00")
    with sessions() as session, pytest.raises(NotFoundError):
        signed_report(session, item_id, 2)
    with sessions() as session, pytest.raises(NotFoundError):
        signed_report(session, "no-such-item", 1)


def test_the_canonical_form_names_study_version_and_text_not_the_patient(
    sessions: Sessions, signed_item: tuple[str, str]
) -> None:
    item_id, uid = signed_item
    with sessions() as session:
        canonical = base64.b64decode(signed_report(session, item_id, 1)["canonical"])
        patient_id = session.scalars(select(Study.patient_id).where(Study.study_uid == uid)).one()
    doc = json.loads(canonical)
    assert (doc["study_uid"], doc["version"], doc["text"]) == (uid, 1, TEXT)
    assert (doc["author"], doc["physician_label"], doc["ai_agrees"]) == ("ann.attending", "af", True)
    assert doc["ai_finding"] == {"task": "ecg-rhythm", "label": "af", "score": pytest.approx(0.93), "flagged": True}
    assert TEXT.encode("utf-8") in canonical  # UTF-8 kept, not \u escapes
    assert canonical == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert PATIENT_NAME.encode("utf-8") not in canonical
    assert patient_id and patient_id.encode() not in canonical


@needs_openssl
def test_openssl_verifies_both_signatures_and_refuses_a_changed_message(
    sessions: Sessions, signed_item: tuple[str, str], tmp_path: Path
) -> None:
    item_id, _ = signed_item
    with sessions() as session:
        doc = signed_report(session, item_id, 1)
    canonical = base64.b64decode(doc["canonical"])
    changed = canonical.replace(b"rate 130", b"rate 150")
    assert changed != canonical
    for index, signature in enumerate(doc["signatures"]):
        der = base64.b64decode(signature["signature"])
        good = _openssl_verify(tmp_path / f"good{index}", signature["public_key"], canonical, der)
        assert good.returncode == 0, good.stdout + good.stderr
        assert "Signature Verified Successfully" in good.stdout
        bad = _openssl_verify(tmp_path / f"bad{index}", signature["public_key"], changed, der)
        assert bad.returncode != 0
    # each signature is its signer's: the other one's key does not verify it
    first, second = doc["signatures"]
    crossed = _openssl_verify(
        tmp_path / "crossed", second["public_key"], canonical, base64.b64decode(first["signature"])
    )
    assert crossed.returncode != 0


def test_verify_study_is_ok_then_flags_a_text_changed_in_sql(sessions: Sessions, signed_item: tuple[str, str]) -> None:
    item_id, uid = signed_item
    with sessions() as session:
        checks = verify_study(session, uid)
    assert sorted((c.item_id, c.version, c.signer, c.ok, c.reason) for c in checks) == [
        (item_id, 1, "ann.attending", True, ""),
        (item_id, 1, "cy.assoc", True, ""),
    ]

    with sessions.begin() as session:  # behind the application's back
        session.execute(text("update reports set text = :t where item_id = :i"), {"t": "No AF.", "i": item_id})
    with sessions() as session:
        checks = verify_study(session, uid)
    assert len(checks) == 2
    assert all(not c.ok and "changed after it was signed" in c.reason for c in checks), checks

    with sessions() as session, pytest.raises(NotFoundError):
        verify_study(session, "1.2.3.404")


def test_verify_study_accepts_the_signature_of_a_text_later_returned_and_revised(
    sessions: Sessions, blobs: FileBlobStore, ann: Principal, cy: Principal
) -> None:
    item_id, uid = _af_item(sessions, blobs)
    act(sessions, item_id, "claim", ann, lease=LEASE)
    act(sessions, item_id, "draft", ann, lease=LEASE, draft=DraftText("AF.", True, "af"))
    act(sessions, item_id, "sign", ann, lease=LEASE)
    act(sessions, item_id, "return", cy, lease=LEASE, comment="Rate?")
    act(sessions, item_id, "claim", ann, lease=LEASE)
    act(sessions, item_id, "draft", ann, lease=LEASE, draft=DraftText(TEXT, True, "af"))
    act(sessions, item_id, "sign", ann, lease=LEASE)
    assert act(sessions, item_id, "sign", cy, lease=LEASE) == "final"
    with sessions() as session:
        checks = verify_study(session, uid)
        doc = signed_report(session, item_id, 1)
    assert len(checks) == 3 and all(c.ok for c in checks), checks  # the first submission covered "AF." by design
    assert json.loads(base64.b64decode(doc["canonical"]))["text"] == TEXT
    assert [s["role"] for s in doc["signatures"]] == ["first_reader", "cosigner"]


def test_private_keys_are_sealed_per_user_and_reused(
    sessions: Sessions, blobs: FileBlobStore, signed_item: tuple[str, str], ann: Principal, cy: Principal
) -> None:
    with sessions() as session:
        rows = {k.user_id: k for k in session.scalars(select(SigningKey))}
    keyring = keyring_for(get_settings())
    for user, other in ((ann, cy), (cy, ann)):
        row = rows[user.id]
        assert "PRIVATE KEY" not in row.sealed_private
        sealed = base64.b64decode(row.sealed_private)
        assert envelope.is_sealed(sealed) and b"PRIVATE KEY" not in sealed
        pem = keyring.open(sealed, f"prescreen-sm2:{user.id}".encode())
        assert b"PRIVATE KEY" in pem
        assert Sm2Signer.from_pem(pem).public_pem() == row.public_pem
        assert Sm2Signer.from_pem(pem).key_id() == row.key_id
        with pytest.raises(KeyFileError):  # bound to its user: not another one's key
            keyring.open(sealed, f"prescreen-sm2:{other.id}".encode())

    second_item, _ = _af_item(sessions, blobs)
    finalize(sessions, second_item, ann, cy, text="AF again.")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(SigningKey)) == 2  # made once per physician
        doc = signed_report(session, second_item, 1)
    assert [s["key_id"] for s in doc["signatures"]] == [rows[ann.id].key_id, rows[cy.id].key_id]


def test_a_report_not_yet_signed_has_no_signed_version(
    sessions: Sessions, blobs: FileBlobStore, ann: Principal
) -> None:
    item_id, uid = _af_item(sessions, blobs)
    act(sessions, item_id, "claim", ann, lease=LEASE)
    act(sessions, item_id, "draft", ann, lease=LEASE, draft=DraftText("AF.", True, "af"))
    with sessions() as session:
        assert verify_study(session, uid) == []
        assert session.scalars(select(Report.status).where(Report.item_id == item_id)).one() == "draft"
        with pytest.raises(NotFoundError, match="not signed yet"):
            signed_report(session, item_id, 1)
        assert session.get(WorklistItem, item_id) is not None


# --------------------------------------------------------------------------- the REST route


@pytest.fixture
def api(tmp_path: Path) -> Api:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    app = create_app()
    app.state.ingestor = Ingestor(session_factory(make_engine(url)), FileBlobStore(tmp_path / "api-blobs"))
    sessions = app.state.ingestor.sessions
    client = TestClient(app)
    headers: dict[str, dict[str, str]] = {}
    ids: dict[str, str] = {}
    for login in ("ann.attending", "cy.assoc", "eve.sono"):
        grade, specialties = READERS[login]
        user = add_user(
            sessions, login=login, name=login.title(), password=PASSWORD, grade=grade, specialties=specialties
        )
        ids[login] = user.id
        got = client.post("/v1/auth/token", data={"username": login, "password": PASSWORD})
        assert got.status_code == 200, got.text
        headers[login] = {"Authorization": f"Bearer {got.json()['access_token']}"}
    return Api(client, sessions, app.state.ingestor.blobs, headers, ids)


@needs_openssl
def test_the_report_route_serves_what_openssl_verifies(api: Api, tmp_path: Path) -> None:
    item = api.item(ecg("af", 0.93))
    status, body = api.get("ann.attending", f"/v1/worklist-items/{item}/report/1")
    assert status == 404, body
    submit(api, item, text=TEXT)
    status, body = api.post("cy.assoc", f"/v1/worklist-items/{item}/sign")
    assert (status, body["state"]) == (200, "final")

    status, body = api.get("cy.assoc", f"/v1/worklist-items/{item}/report/1")
    assert status == 200, body
    assert (body["item_id"], body["version"], body["status"]) == (item, 1, "final")
    assert [(s["signer"], s["role"]) for s in body["signatures"]] == [
        ("ann.attending", "first_reader"),
        ("cy.assoc", "cosigner"),
    ]
    canonical = base64.b64decode(body["canonical"])
    assert json.loads(canonical)["text"] == TEXT
    for index, signature in enumerate(body["signatures"]):
        done = _openssl_verify(
            tmp_path / f"route{index}", signature["public_key"], canonical, base64.b64decode(signature["signature"])
        )
        assert done.returncode == 0, done.stdout + done.stderr

    assert api.get("cy.assoc", f"/v1/worklist-items/{item}/report/2")[0] == 404
    assert api.get("eve.sono", f"/v1/worklist-items/{item}/report/1")[0] == 403  # not their specialty
    assert api.get(None, f"/v1/worklist-items/{item}/report/1")[0] == 401
