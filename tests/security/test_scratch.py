"""Spooled uploads and records being decoded go to memory (``/dev/shm``), not to a disk."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prescreen.config import Settings
from prescreen.security.scratch import choose_scratch, use_scratch


@pytest.fixture
def restore_tempdir() -> Iterator[None]:
    before = tempfile.tempdir
    yield
    tempfile.tempdir = before


def test_a_configured_scratch_folder_wins(tmp_path: Path) -> None:
    chosen, _ = choose_scratch(Settings(home=tmp_path / "h", scratch_dir=tmp_path / "s"), tmp_path / "shm")
    assert chosen == tmp_path / "s"


def test_shared_memory_is_the_default_when_it_has_room(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    assert choose_scratch(Settings(home=tmp_path / "h", max_upload_bytes=1024), shm) == (shm, True)


def test_without_room_in_memory_the_system_folder_is_used(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    huge = Settings(home=tmp_path / "h", max_upload_bytes=1 << 60)
    assert choose_scratch(huge, shm)[0] == Path(tempfile.gettempdir())
    assert choose_scratch(Settings(home=tmp_path / "h"), tmp_path / "absent")[0] == Path(tempfile.gettempdir())


@pytest.mark.usefixtures("restore_tempdir")
def test_the_process_temporary_files_go_to_a_private_scratch_folder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", scratch_dir=tmp_path / "s")
    (tmp_path / "s").mkdir()
    folder = use_scratch(settings)
    assert folder.parent == tmp_path / "s" and folder.stat().st_mode & 0o777 == 0o700
    with tempfile.TemporaryFile() as spooled:  # what Starlette's spooled upload rolls over into
        assert Path(tempfile.gettempdir()) == folder
        spooled.write(b"x")
    assert use_scratch(settings) == folder  # one per process
