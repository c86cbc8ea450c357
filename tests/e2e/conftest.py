"""Real processes for end-to-end tests: the CLI and ``prescreen serve``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

CLI = [sys.executable, "-m", "prescreen.cli"]
START_TIMEOUT_S = 120


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cli_env(isolated_home: Path) -> dict[str, str]:
    return {**os.environ, "PRESCREEN_HOME": str(isolated_home), "COLUMNS": "200"}


def start_process(
    cmd: list[str], env: dict[str, str], log_path: Path, ready_url: str | None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group; wait until ``ready_url`` answers 200 (if given)."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if ready_url is None:
        return proc
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text(errors="replace")[-2000:])
        if time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError("server not ready in time")
        if answers_ready(proc, ready_url):
            return proc
        time.sleep(0.5)


def answers_ready(proc: subprocess.Popen[bytes], url: str) -> bool:
    """Whether ``url`` (a base URL or its ``/readyz``) answers /readyz with 200 from ``proc``."""
    base = url.removesuffix("/readyz")
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200 and listens(proc, base)
    except httpx.HTTPError:
        return False


def listens(proc: subprocess.Popen[bytes], url: str) -> bool:
    """Whether ``proc`` or a descendant holds the listening socket of ``url``'s port. A free port
    picked by :func:`free_port` is released before the server binds it, so a server of a test on
    another xdist worker may take it meanwhile and answer in its place."""
    port = httpx.URL(url).port
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for member in family:
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in member.net_connections("tcp")):
                return True
    return False


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the process and all its descendants (BentoML starts its worker in a session of its
    own, so a process-group signal would miss it); SIGKILL what is left after 20 s."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)
    _, alive = psutil.wait_procs(family, timeout=20)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=20)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def serve_command(port: int) -> list[str]:
    return [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)]


@pytest.fixture
def server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``prescreen serve`` as a process; yields its base URL once /readyz answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**cli_env, "PRESCREEN_DICOM_PORT": str(free_port())}
    proc = start_process(serve_command(port), env, tmp_path / "server.log", f"{base}/readyz")
    try:
        yield base
    finally:
        stop_process(proc)
