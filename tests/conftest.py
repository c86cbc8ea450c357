"""Shared fixtures: an isolated prescreen home per test, and the data folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from prescreen.config import get_settings
from tests.peers import DATA_HINT, dcmtk, require_peer

pytest_plugins = ["tests.fixtures_ecg", "tests.fixtures_images", "tests.fixtures_dicom"]

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("PRESCREEN_DATA_DIR", str(REPO.parent / "shared" / "data"))).resolve()


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session fixtures (tiny models) never see the developer's own ./.prescreen."""
    home = tmp_path_factory.mktemp("session-home")
    saved = {k: os.environ.get(k) for k in ("PRESCREEN_HOME", "PRESCREEN_DATA_DIR")}
    os.environ["PRESCREEN_HOME"] = str(home)
    os.environ["PRESCREEN_DATA_DIR"] = str(data_dir())
    get_settings.cache_clear()
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own PRESCREEN_HOME (model store, cache) and fresh settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("PRESCREEN_HOME", str(home))
    monkeypatch.setenv("PRESCREEN_DATA_DIR", str(data_dir()))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    # as the older acceptance checks do: the tests written before access control send without
    # credentials and sign in with a password alone; the access tests set their own
    monkeypatch.setenv("PRESCREEN_ANONYMOUS_PERMISSIONS", "screen,ingest,studies:read,models:read")
    monkeypatch.setenv("PRESCREEN_MFA", "step-up")
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The labelled data sets; tests using it are marked ``data``. Missing: skipped, failed under CI."""
    path = data_dir()
    require_peer(f"the data sets under {path}", (path / "cinc2017" / "REFERENCE.csv").is_file(), DATA_HINT)
    return path


@pytest.fixture(scope="session")
def need_dcmtk() -> None:
    """DCMTK's ``storescu`` and ``echoscu`` (the real ones, not pynetdicom's scripts of the same
    names). Session-scoped, so that a missing DCMTK stops a test before its servers start."""
    dcmtk("storescu")
    dcmtk("echoscu")
