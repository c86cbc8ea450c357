"""The one place that decides what a test does when a peer it needs is missing.

A *peer* is anything outside the Python environment that a test talks to or reads: the data sets
under ``PRESCREEN_DATA_DIR``, DCMTK (``storescu``, ``echoscu``), Orthanc, PostgreSQL, Chromium,
Linux facilities. On a developer's machine a missing peer skips the test; under CI (``CI`` set to
anything but ``""``, ``0``, ``false``, ``no``) it fails the test, because ``.ci/run`` installs every
peer and a silent skip would hide a broken install.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

import pytest

#: Folders (``os.pathsep``-separated) searched for DCMTK instead of ``PATH``; lets a test run
#: pretend that DCMTK is not installed (``PRESCREEN_TEST_DCMTK_PATH=/nowhere``).
DCMTK_PATH_ENV = "PRESCREEN_TEST_DCMTK_PATH"

DATA_HINT = "CI lays shared/data beside the clone and .ci/run sets PRESCREEN_DATA_DIR to it"
DCMTK_HINT = "CI installs it with `apt-get install dcmtk` in .ci/run"
ORTHANC_HINT = "CI installs it with `apt-get install orthanc` in .ci/run"
CHROMIUM_HINT = "CI installs it with `apt-get install chromium` in .ci/run"
POSTGRES_HINT = "CI installs it with `apt-get install postgresql` in .ci/run"


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set and not false-like)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_peer(what: str, available: bool, hint: str) -> None:
    """Return if ``available``; else fail the test under CI, skip it elsewhere.

    Args:
        what: what is missing, as the message says it (``"DCMTK storescu"``).
        available: whether the peer was found.
        hint: how CI provides the peer (so that the failure says what to fix).
    """
    if available:
        return
    if in_ci():
        pytest.fail(f"missing under CI, which must run this test: {what} ({hint})", pytrace=False)
    pytest.skip(f"missing: {what} ({hint})")


def _search_path() -> list[Path]:
    folders = os.environ.get(DCMTK_PATH_ENV)
    if folders is None:
        folders = os.environ.get("PATH", "")
    return [Path(f) for f in folders.split(os.pathsep) if f]


@cache
def _dcmtk_version(path: Path) -> str | None:
    """The ``--version`` banner of ``path`` if it is a DCMTK tool (``$dcmtk: storescu v3.6.7 ...``)."""
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    banner = (done.stdout + done.stderr).strip()
    first = banner.splitlines()[0] if banner else ""
    return first if first.startswith(f"$dcmtk: {path.name} v") else None


def find_dcmtk(tool: str) -> Path | None:
    """The absolute path of the DCMTK ``tool`` (``storescu``, ``echoscu``) on ``PATH`` (or on
    ``PRESCREEN_TEST_DCMTK_PATH``), or None.

    A file of that name counts only if its ``--version`` says it is DCMTK's: pynetdicom installs
    scripts of the same names (different options, different exit statuses) into the venv, and
    those never stand in for DCMTK.
    """
    for folder in _search_path():
        candidate = folder / tool
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        if _dcmtk_version(candidate) is not None:
            return candidate
    return None


def dcmtk(tool: str) -> str:
    """The path of DCMTK's ``tool`` for a subprocess command line; fails (CI) or skips the test
    when DCMTK is not installed."""
    found = find_dcmtk(tool)
    require_peer(f"DCMTK {tool}", found is not None, DCMTK_HINT)
    assert found is not None
    return str(found)
