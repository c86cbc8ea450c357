"""Encryption at rest, the primitives: SM4-GCM envelopes (``prescreen.security.envelope``) and the
key hierarchy (``prescreen.security.keyring``): a master key file that wraps monthly data keys in
``keys/keyring.json``, rotation of the master key, owner-only files with no key in the clear, two
processes making the month's key at once, and opening an envelope of another loaded keyring."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from prescreen.config import Settings
from prescreen.errors import KeyFileError
from prescreen.security import envelope
from prescreen.security import keyring as keyring_module
from prescreen.security.keyring import KEYRING_FILE, Keyring, keyring_for, open_sealed_any

KEY_ID = "0123456789abcdef"
JAN = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
JAN_LATE = datetime(2024, 1, 31, 23, 59, tzinfo=UTC)
FEB = datetime(2024, 2, 1, 0, 1, tzinfo=UTC)


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    """(keys folder, master key file): the master key apart from the keyring, as advised."""
    return tmp_path / "home" / "keys", tmp_path / "vault" / "master.key"


@pytest.fixture
def ring(paths: tuple[Path, Path]) -> Keyring:
    return Keyring(*paths)


# --------------------------------------------------------------------------- envelopes


def test_seal_and_open_round_trip() -> None:
    key = envelope.new_key()
    for plaintext in (b"", b"x", "张三丰".encode(), os.urandom(5000)):
        sealed = envelope.seal(key, KEY_ID, plaintext, b"address")
        assert envelope.is_sealed(sealed)
        assert len(sealed) == envelope.HEADER + len(plaintext) + envelope.TAG_BYTES
        assert envelope.open_sealed(key, sealed, b"address") == plaintext
    # a fresh nonce each time: the same plaintext never seals to the same bytes
    assert envelope.seal(key, KEY_ID, b"same") != envelope.seal(key, KEY_ID, b"same")


def test_the_key_id_is_in_the_header() -> None:
    sealed = envelope.seal(envelope.new_key(), KEY_ID, b"data")
    assert sealed[:4] == envelope.MAGIC
    assert sealed[4 : 4 + envelope.KEY_ID_BYTES] == KEY_ID.encode()
    assert envelope.key_id_of(sealed) == KEY_ID
    with pytest.raises(KeyFileError):
        envelope.key_id_of(b"plain text, not an envelope")


def test_another_associated_datum_or_key_does_not_open() -> None:
    key = envelope.new_key()
    sealed = envelope.seal(key, KEY_ID, b"secret", b"blob-a")
    with pytest.raises(KeyFileError):
        envelope.open_sealed(key, sealed, b"blob-b")
    with pytest.raises(KeyFileError):
        envelope.open_sealed(key, sealed)  # no associated datum at all
    with pytest.raises(KeyFileError):
        envelope.open_sealed(envelope.new_key(), sealed, b"blob-a")
    with pytest.raises(KeyFileError):
        envelope.open_sealed(key, b"secret", b"blob-a")  # not an envelope
    with pytest.raises(KeyFileError):
        envelope.open_sealed(key, sealed[: envelope.HEADER + 3], b"blob-a")  # cut short


def test_bad_keys_and_key_ids_are_refused() -> None:
    with pytest.raises(KeyFileError):
        envelope.seal(b"short", KEY_ID, b"x")
    with pytest.raises(KeyFileError):
        envelope.seal(envelope.new_key(), "too-short", b"x")


def _flipped(data: bytes, index: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


def test_tampering_the_nonce_ciphertext_or_tag_does_not_open() -> None:
    key = envelope.new_key()
    sealed = envelope.seal(key, KEY_ID, b"patient 4711", b"ad")
    body = [i for i in range(len(sealed)) if not 4 <= i < 4 + envelope.KEY_ID_BYTES]  # all but the key id
    for index in body:
        for mask in (0x01, 0x80):
            with pytest.raises(KeyFileError):
                envelope.open_sealed(key, _flipped(sealed, index, mask), b"ad")


def test_tampering_any_byte_including_the_key_id_does_not_open() -> None:
    key = envelope.new_key()
    sealed = envelope.seal(key, KEY_ID, b"patient 4711", b"ad")
    opened = []
    for index in range(len(sealed)):
        try:
            envelope.open_sealed(key, _flipped(sealed, index, 0x01), b"ad")
            opened.append(index)
        except KeyFileError:
            pass
    assert opened == []


def test_tampering_any_byte_does_not_open_through_the_keyring(ring: Keyring) -> None:
    sealed = ring.seal(b"patient 4711", b"ad")
    for index in range(len(sealed)):
        with pytest.raises(KeyFileError):
            ring.open(_flipped(sealed, index, 0x01), b"ad")


def test_a_non_ascii_key_id_is_a_key_file_error(ring: Keyring) -> None:
    sealed = ring.seal(b"patient 4711", b"ad")
    with pytest.raises(KeyFileError):
        ring.open(_flipped(sealed, 4, 0x80), b"ad")


# --------------------------------------------------------------------------- the keyring


def test_one_current_data_key_per_month(ring: Keyring) -> None:
    jan_id, jan_key = ring.current(JAN)
    assert ring.current(JAN_LATE) == (jan_id, jan_key)
    feb_id, feb_key = ring.current(FEB)
    assert feb_id != jan_id and feb_key != jan_key
    assert len(jan_id) == envelope.KEY_ID_BYTES and len(jan_key) == envelope.KEY_BYTES
    status = ring.status()
    assert status["periods"] == ["2024-01", "2024-02"]
    assert status["data_keys"] == 2
    assert "mac" in status["secrets"]
    # an envelope names the data key it was sealed with; each month's envelopes still open
    jan_sealed = envelope.seal(jan_key, jan_id, b"january")
    assert envelope.key_id_of(jan_sealed) == jan_id
    assert ring.open(jan_sealed) == b"january"
    assert ring.open(envelope.seal(feb_key, feb_id, b"february")) == b"february"
    # sealing now uses this month's key
    this_month = ring.seal(b"now")
    assert envelope.key_id_of(this_month) == ring.current()[0]


def test_data_keys_survive_a_new_keyring_on_the_same_files(paths: tuple[Path, Path], ring: Keyring) -> None:
    jan_id, jan_key = ring.current(JAN)
    sealed = ring.seal(b"kept", b"ad")
    mac = ring.mac_hex(b"content")
    again = Keyring(*paths)
    assert again.current(JAN) == (jan_id, jan_key)
    assert again.data_key(jan_id) == jan_key
    assert again.open(sealed, b"ad") == b"kept"
    assert again.mac_hex(b"content") == mac
    with pytest.raises(KeyFileError, match="no data key"):
        again.data_key("ffffffffffffffff")


def test_a_wrong_master_key_file_is_refused_naming_the_file(
    paths: tuple[Path, Path], ring: Keyring, tmp_path: Path
) -> None:
    folder, _ = paths
    wrong = tmp_path / "elsewhere" / "wrong.key"
    wrong.parent.mkdir()
    wrong.write_text(envelope.new_key().hex())
    with pytest.raises(KeyFileError, match="is not the one that wrapped") as caught:
        Keyring(folder, wrong)
    assert str(wrong) in str(caught.value)

    garbage = tmp_path / "elsewhere" / "garbage.key"
    garbage.write_text("not hex at all")
    with pytest.raises(KeyFileError) as caught:
        Keyring(folder, garbage)
    assert str(garbage) in str(caught.value)

    short = tmp_path / "elsewhere" / "short.key"
    short.write_text("abcd")
    with pytest.raises(KeyFileError) as caught:
        Keyring(folder, short)
    assert str(short) in str(caught.value)


def test_a_changed_wrapped_data_key_does_not_open(paths: tuple[Path, Path], ring: Keyring) -> None:
    folder, master = paths
    jan_id, _ = ring.current(JAN)
    doc = json.loads((folder / KEYRING_FILE).read_text())
    wrapped = bytearray(base64.b64decode(doc["data_keys"][jan_id]))
    wrapped[-1] ^= 1
    doc["data_keys"][jan_id] = base64.b64encode(bytes(wrapped)).decode()
    (folder / KEYRING_FILE).write_text(json.dumps(doc))
    with pytest.raises(KeyFileError):
        Keyring(folder, master).data_key(jan_id)


def test_rotate_rewraps_the_keys_and_retires_the_old_master_key(
    paths: tuple[Path, Path], ring: Keyring, tmp_path: Path
) -> None:
    folder, master = paths
    jan_id, jan_key = ring.current(JAN)
    sealed_jan = envelope.seal(jan_key, jan_id, b"old data", b"ad")
    sealed_now = ring.seal(b"this month", b"ad")
    mac = ring.mac_hex(b"content")
    old_master = master.read_bytes()
    old_copy = tmp_path / "old-master.key"
    old_copy.write_bytes(old_master)
    old_id = ring.status()["master_key_id"]
    wrapped_before = json.loads((folder / KEYRING_FILE).read_text())["data_keys"]

    new_id = ring.rotate()

    assert new_id != old_id
    assert master.read_bytes() != old_master
    assert ring.status()["master_key_id"] == new_id
    assert ring.status()["rotated"]
    doc = json.loads((folder / KEYRING_FILE).read_text())
    assert doc["kek_id"] == new_id
    assert set(doc["data_keys"]) == set(wrapped_before)
    assert all(doc["data_keys"][k] != wrapped_before[k] for k in wrapped_before)  # re-wrapped
    assert sorted(p.name for p in master.parent.iterdir()) == ["master.key"]  # no .previous / .new left
    assert stat.S_IMODE(master.stat().st_mode) == 0o600

    fresh = Keyring(folder, master)
    assert fresh.status()["master_key_id"] == new_id
    assert fresh.data_key(jan_id) == jan_key  # the data keys themselves did not change
    assert fresh.open(sealed_jan, b"ad") == b"old data"
    assert fresh.open(sealed_now, b"ad") == b"this month"
    assert fresh.mac_hex(b"content") == mac  # blob addresses stay valid
    with pytest.raises(KeyFileError, match="is not the one that wrapped"):
        Keyring(folder, old_copy)


def test_another_keyring_instance_follows_a_rotation(paths: tuple[Path, Path], ring: Keyring) -> None:
    """Two processes (here: two instances) on one home: after one rotates, the other re-reads the new
    master key instead of failing."""
    other = Keyring(*paths)
    ring.current(JAN)
    ring.rotate()
    feb_id, feb_key = other.current(FEB)  # writes keyring.json, under the new master key
    assert Keyring(*paths).data_key(feb_id) == feb_key
    assert ring.data_key(feb_id) == feb_key


def test_a_crash_in_the_middle_of_a_rotation_leaves_a_usable_keyring(
    paths: tuple[Path, Path], ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, master = paths
    sealed = ring.seal(b"data", b"ad")
    real_replace = os.replace

    def crash_on_master(src: Any, dst: Any) -> None:
        if Path(dst) == master:
            raise SystemExit("power lost")
        real_replace(src, dst)

    monkeypatch.setattr(keyring_module.os, "replace", crash_on_master)
    with pytest.raises(SystemExit):
        ring.rotate()
    monkeypatch.setattr(keyring_module.os, "replace", real_replace)
    assert Keyring(folder, master).open(sealed, b"ad") == b"data"


def test_key_files_are_owner_only_and_hold_no_key_in_the_clear(paths: tuple[Path, Path], ring: Keyring) -> None:
    folder, master = paths
    ids = [ring.current(at)[0] for at in (JAN, FEB, datetime(2024, 3, 3, tzinfo=UTC))]
    ring.put_secret("physician", b"S" * 16)
    ring.rotate()
    ring.current(datetime(2024, 4, 4, tzinfo=UTC))  # and one made after the rotation
    for path in (folder / KEYRING_FILE, master):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0

    fresh = Keyring(folder, master)
    doc = json.loads((folder / KEYRING_FILE).read_text())
    secrets = [fresh.data_key(k) for k in doc["data_keys"]] + [fresh.secret(n) for n in doc["secrets"]]
    assert len(secrets) == 4 + 2 and set(ids) <= set(doc["data_keys"])
    secrets.append(bytes.fromhex(master.read_text().strip()))  # nor the master key itself
    stored = (folder / KEYRING_FILE).read_bytes()
    for secret in secrets:
        for form in (
            secret,
            secret.hex().encode(),
            secret.hex().upper().encode(),
            base64.b64encode(secret),
            base64.b64encode(secret).rstrip(b"="),
        ):
            assert form not in stored


def _make_current_key(folder: str, master: str, barrier: Any, out: Any) -> None:
    """Child process: a keyring of its own on the shared files, the month's key, at the same moment."""
    try:
        barrier.wait(60)
        ring = Keyring(Path(folder), Path(master))
        key_id, key = ring.current(JAN)
        out.put((key_id, key.hex()))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def test_two_processes_making_the_month_key_at_once_end_with_one(paths: tuple[Path, Path]) -> None:
    folder, master = paths  # nothing exists yet: both also race to make the master key and keyring
    processes = 3
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    children = [
        context.Process(target=_make_current_key, args=(str(folder), str(master), barrier, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        got = [out.get(timeout=90) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
    assert [child.exitcode for child in children] == [0] * processes
    assert all(key_id != "error" for key_id, _ in got), got
    assert len(set(got)) == 1, got
    doc = json.loads((folder / KEYRING_FILE).read_text())
    assert doc["current"] == {"2024-01": got[0][0]}
    assert list(doc["data_keys"]) == [got[0][0]]
    assert Keyring(folder, master).data_key(got[0][0]).hex() == got[0][1]


def test_open_sealed_any_opens_an_envelope_of_another_loaded_keyring(tmp_path: Path) -> None:
    first = keyring_for(Settings(home=tmp_path / "a"))
    second = keyring_for(Settings(home=tmp_path / "b"))
    assert keyring_for(Settings(home=tmp_path / "a")) is first  # one per process and home
    sealed = first.seal(b"from home a", b"ad")
    with pytest.raises(KeyFileError):
        second.open(sealed, b"ad")
    assert open_sealed_any(second, sealed, b"ad") == b"from home a"
    assert open_sealed_any(first, sealed, b"ad") == b"from home a"
    with pytest.raises(KeyFileError):
        open_sealed_any(second, sealed, b"other")
    # a key no loaded keyring holds: an error, not a guess
    stranger = Keyring(tmp_path / "c" / "keys", tmp_path / "c" / "master.key")
    with pytest.raises(KeyFileError):
        open_sealed_any(second, stranger.seal(b"x"))
