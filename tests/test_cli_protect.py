"""The data-protection commands end to end through the CLI (typer's CliRunner, in process):
``keys status|rotate``, ``backup full|list|verify``, ``restore``, ``reports verify`` and
``encrypt-existing``, on the test's own PRESCREEN_HOME (SQLite)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from prescreen.cli import app
from prescreen.config import get_settings
from prescreen.pipeline.runtime import open_store
from prescreen.security import envelope
from prescreen.security import keyring as keyring_module
from prescreen.store.ingest import Ingestor
from prescreen.store.schema import Instance, Study

runner = CliRunner()
NAME = "张三丰"
DATA = b"\x00\x01" * 64 + b"PLAINTEXT-MARKER-4711"


def run(*args: str) -> tuple[int, str]:
    """Exit code and output, whitespace collapsed (stderr lines are wrapped at the terminal's width)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(autouse=True)
def own_keyrings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring_module, "_KEYRINGS", {})


def forget_keyrings(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a new process would: no keyring loaded yet."""
    monkeypatch.setattr(keyring_module, "_KEYRINGS", {})


def _ingest() -> str:
    """One uploaded study with a patient name in the current home; its UID."""
    ingestor = open_store(get_settings())
    try:
        received = ingestor.store_upload({"rec.dat": DATA}, modality="ECG", patient_name=NAME, patient_id="ID-4711")
        return received[0].study_uid
    finally:
        ingestor.sessions.kw["bind"].dispose()


def _read(uid: str) -> tuple[str | None, str | None, bytes]:
    """The study's decrypted patient fields and its one blob, read with the keys of the current home."""
    ingestor: Ingestor = open_store(get_settings())
    try:
        with ingestor.sessions() as session:
            study = session.scalars(select(Study).where(Study.study_uid == uid)).one()
            key = session.scalars(select(Instance.blob_key)).one()
            return study.patient_name, study.patient_id, ingestor.blobs.get(key)
    finally:
        ingestor.sessions.kw["bind"].dispose()


def _master_key_id(output: str) -> str:
    found = re.search(r"master_key_id: ([0-9a-f]{16})", output)
    assert found, output
    return found.group(1)


def test_keys_status_then_rotate_and_the_data_still_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    uid = _ingest()
    code, out = run("keys", "status")
    assert code == 0, out
    before = _master_key_id(out)
    assert "master_key_file:" in out and "data_keys: 1" in out and "mac" in out
    master = get_settings().home / "keys" / "master.key"
    old_master = master.read_text()

    code, out = run("keys", "rotate")
    assert code == 0, out
    assert "master key rotated" in out and before in out and "1 data keys re-wrapped" in out

    forget_keyrings(monkeypatch)
    code, out = run("keys", "status")
    assert code == 0, out
    after = _master_key_id(out)
    assert after != before and after in out
    assert master.read_text() != old_master
    assert "rotated: 20" in out

    forget_keyrings(monkeypatch)
    assert _read(uid) == (NAME, "ID-4711", DATA)


def test_backup_full_list_verify_then_a_corrupted_file(tmp_path: Path) -> None:
    _ingest()
    backups = tmp_path / "backups"
    code, out = run("backup", "full", "--to", str(backups))
    assert code == 0, out
    assert "1 studies" in out and "1 new blobs" in out
    (made,) = [p for p in backups.iterdir() if p.is_dir()]
    assert made.name.endswith("-full") and made.name in out

    code, out = run("backup", "list", "--from", str(backups))
    assert code == 0, out
    assert made.name in out and "full" in out

    code, out = run("backup", "verify", "--from", str(backups))
    assert code == 0, out
    assert out.startswith("ok:") and "SM3" in out

    code, out = run("backup", "incremental", "--to", str(backups))
    assert code == 0, out
    assert "0 new blobs" in out
    code, out = run("backup", "verify", "--from", str(backups))
    assert code == 0, out

    (blob,) = (made / "blobs").iterdir()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    code, out = run("backup", "verify", "--from", str(backups))
    assert code == 1, out
    assert made.name in out and f"blobs/{blob.name} does not match its SM3 hash" in out

    code, out = run("backup", "verify", "--from", str(tmp_path / "nothing-here"))
    assert code == 1 and "no backup set here" in out


def test_restore_into_an_empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = _ingest()
    old = get_settings()
    backups = tmp_path / "backups"
    assert run("backup", "full", "--to", str(backups))[0] == 0

    forget_keyrings(monkeypatch)
    new_home = tmp_path / "new-home"
    monkeypatch.setenv("PRESCREEN_HOME", str(new_home))
    get_settings.cache_clear()
    code, out = run("restore", "--from", str(backups))
    assert code == 2, out  # no master key: refused, nothing left behind
    assert "master key" in out and "Traceback" not in out
    assert not new_home.exists()

    monkeypatch.setenv("PRESCREEN_MASTER_KEY_FILE", str(old.home / "keys" / "master.key"))
    get_settings.cache_clear()
    code, out = run("restore", "--from", str(backups))
    assert code == 0, out
    assert "1 studies" in out and "audit chain intact" in out
    forget_keyrings(monkeypatch)
    assert _read(uid) == (NAME, "ID-4711", DATA)

    code, out = run("restore", "--from", str(backups))
    assert code == 2 and "not empty" in out


def test_reports_verify_of_a_study_without_reports() -> None:
    uid = _ingest()
    code, out = run("reports", "verify", uid)
    assert code == 0, out
    assert "no signed report for this study" in out
    code, out = run("reports", "verify", "1.2.3.404")
    assert code == 2, out
    assert "no study 1.2.3.404" in out and "Traceback" not in out


def test_encrypt_existing_seals_a_plain_store_and_is_resumable() -> None:
    uid = _ingest()
    ingestor = open_store(get_settings())
    try:
        files = ingestor.blobs.files  # type: ignore[attr-defined]
        plain_key = files.put(b"an earlier version's plain blob")
        with ingestor.sessions.begin() as session:  # as an earlier version wrote it: plain text
            session.execute(text("update studies set patient_name = :n where study_uid = :u"), {"n": NAME, "u": uid})
    finally:
        ingestor.sessions.kw["bind"].dispose()
    code, out = run("encrypt-existing")
    assert code == 0, out
    assert "sealed 1 blobs and 1 studies" in out
    assert envelope.is_sealed(files.get(plain_key))
    code, out = run("encrypt-existing")
    assert code == 0 and "sealed 0 blobs and 0 studies" in out
    assert _read(uid)[:2] == (NAME, "ID-4711")
