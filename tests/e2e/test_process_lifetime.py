"""``prescreen serve`` as an operator meets it: SIGTERM stops the server and its worker gracefully,
``kill -9`` of the CLI leaves nothing holding the HTTP and DICOM ports (the children die with their
parent), and a restart right after either works on the same ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import free_port, serve_command, start_process, stop_process

pytestmark = pytest.mark.e2e


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def family(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]


def wait_gone(members: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(members, timeout=seconds)
    return [m for m in alive if m.is_running() and m.status() != psutil.STATUS_ZOMBIE]


def test_sigterm_then_kill_9_then_restart_on_the_same_ports(cli_env: dict[str, str], tmp_path: Path) -> None:
    port, dicom = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**cli_env, "PRESCREEN_DICOM_PORT": str(dicom)}
    ready = f"{base}/readyz"

    first = start_process(serve_command(port), env, tmp_path / "s1.log", ready)
    members = family(first)
    assert len(members) >= 2 and port_open(dicom)
    os.kill(first.pid, signal.SIGTERM)  # the CLI alone, as a service manager would
    assert wait_gone(members, 30) == [], "SIGTERM left processes running"
    assert not answers(f"{base}/healthz") and not port_open(dicom)

    second = start_process(serve_command(port), env, tmp_path / "s2.log", ready)
    members = family(second)
    try:
        os.kill(second.pid, signal.SIGKILL)  # the CLI only: its children must follow
        second.wait(10)
        assert wait_gone(members[1:], 15) == [], "the server outlived its parent's kill -9"
        assert not answers(f"{base}/healthz") and not port_open(dicom)
    finally:
        for member in members:
            if member.is_running():
                member.kill()

    third = start_process(serve_command(port), env, tmp_path / "s3.log", ready)
    try:
        assert httpx.get(ready, timeout=5).status_code == 200 and port_open(dicom)
    finally:
        stop_process(third)
