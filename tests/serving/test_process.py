"""The service process on its host: state readable by its owner only, a server that dies with its
parent, and query parameters bounded in their declaration (a huge offset is a 422, not a 500)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prescreen.config import get_settings
from prescreen.pipeline.runtime import open_store
from prescreen.serving.app import create_app
from prescreen.serving.process import IdleTrim, restrict_to_owner

REPO = Path(__file__).resolve().parents[2]


def test_restrict_to_owner_closes_a_home_made_before(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "blobs" / "ab").mkdir(parents=True)
    (home / "prescreen.db").write_bytes(b"x")
    (home / "blobs" / "ab" / "blob").write_bytes(b"y")
    for path in (home, home / "blobs", home / "blobs" / "ab"):
        path.chmod(0o755)
    for path in (home / "prescreen.db", home / "blobs" / "ab" / "blob"):
        path.chmod(0o644)
    assert restrict_to_owner(home) == 5
    modes = {p.relative_to(home).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [home, *home.rglob("*")]}
    assert modes == {".": 0o700, "blobs": 0o700, "blobs/ab": 0o700, "prescreen.db": 0o600, "blobs/ab/blob": 0o600}
    assert restrict_to_owner(home) == 0


def test_the_cli_writes_owner_only_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PRESCREEN_HOME": str(home)}
    cli = Path(sys.executable).with_name("prescreen")
    r = subprocess.run([str(cli), "users", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    paths = [home, *home.rglob("*")]
    assert any(p.name == "prescreen.db" for p in paths)
    readable = [p for p in paths if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert readable == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux-only")
def test_a_child_dies_with_its_parent_even_on_kill_9(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = textwrap.dedent(
        f"""
        import subprocess, sys, time
        from prescreen.serving.process import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its parent's kill -9"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_huge_offset_is_422_not_500(tmp_path: Path) -> None:
    app = create_app(None)
    app.state.ingestor = open_store(get_settings())
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/v1/studies", params={"offset": 2**31 - 1}).status_code == 200
    r = client.get("/v1/studies", params={"offset": "9223372036854775808"})
    assert r.status_code == 422, r.text


def test_memory_is_released_once_after_a_burst_not_after_each_request() -> None:
    released: list[float] = []
    trim = IdleTrim(delay=0.3, release=lambda: released.append(time.monotonic()))
    last = 0.0
    for _ in range(5):  # a burst: each request ends within the delay of the previous one
        trim.touch()
        last = time.monotonic()
        time.sleep(0.05)
    assert released == []  # not during the burst
    deadline = time.monotonic() + 5
    while not released and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(released) == 1 and released[0] >= last + 0.3  # once, a delay after the last one
    trim.touch()  # a later request: released again
    deadline = time.monotonic() + 5
    while len(released) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(released) == 2


FAULTS = """
import resource, sys
if sys.argv[1] == "tuned":
    from prescreen.serving.process import reuse_freed_memory
    assert reuse_freed_memory()
from prescreen.models.model_store import ModelStore
from prescreen.models.onnx_model import OnnxModel
stored = ModelStore().active("chest-xray")
model = OnnxModel(stored.onnx_path, stored.card)
files = {"cr.dcm": open(sys.argv[2], "rb").read()}
for _ in range(3):
    model.screen_files(files)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    model.screen_files(files)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


@pytest.mark.data
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_reused_memory_spares_each_screening_its_page_faults(tmp_path: Path, shared_data: Path) -> None:
    sample = shared_data / "dicom" / "cr_chest_rsna_sample.dcm"

    def faults_per_screening(mode: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
        env["PRESCREEN_HOME"] = str(tmp_path / mode)
        run = [sys.executable, "-c", FAULTS, mode, str(sample)]
        out = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    # glibc's defaults map a decoded radiograph's buffers afresh on every screening (about 2,800
    # pages of 4 KB here); kept for reuse, the next screening faults next to none
    assert faults_per_screening("default") > 1_000
    assert faults_per_screening("tuned") < 100
