"""The Bento, as BentoML users deploy it: ``bentoml build`` from ``bentofile.yaml`` (offline: packages
pinned, not locked), ``bentoml export`` / ``bentoml import`` onto a fresh home (another machine), then
``bentoml serve <tag>`` of the *built* Bento as a real process, screening a real ECG on ``/v1/screen``.

The served code must be the Bento's own ``src/``, never this working tree (which an editable install
makes importable too): the server runs with ``PYTHONVERBOSE=1``, and every ``prescreen`` module it
loaded is checked to come from the Bento.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from tests.e2e.conftest import answers_ready, free_port, run_cli, stop_process
from tests.peers import require_peer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BENTOML = [sys.executable, "-m", "bentoml"]
STEP_TIMEOUT_S = 180  # one bentoml command (build, export, import)
START_TIMEOUT_S = 150  # the built Bento's server answering /readyz
SHIPPED = REPO / "prescreen" / "shipped"
#: an imported module, as ``PYTHONVERBOSE`` reports it: ``# code object from '/x/y.py'`` (compiled)
#: or ``# /x/__pycache__/y.cpython-311.pyc matches /x/y.py`` (from the cache)
LOADED = re.compile(r"^# (?:code object from '?|\S+ matches )(/[^\s']+\.py)'?\s*$")
UV_HINT = "pyproject's dev extra installs uv (make), which `bentoml build` calls; without it BentoML pip-installs it"


def bentoml(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*BENTOML, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert r.returncode == 0, f"bentoml {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def uv_installed() -> bool:
    """Whether BentoML finds ``uv`` without installing it (it looks on PATH, then for the package)."""
    if shutil.which("uv"):
        return True
    try:
        importlib.metadata.version("uv")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def not_verbose(log: Path, n: int = 60) -> str:
    """The last ``n`` lines of a server log, without PYTHONVERBOSE's import chatter."""
    chatter = ("#", "import ", "Processing ", "Adding directory", "Python 3.", 'Type "help"')
    lines = [line for line in log.read_text(errors="replace").splitlines() if line and not line.startswith(chatter)]
    return "\n".join(lines[-n:])


def home_env(base: dict[str, str], home: Path) -> dict[str, str]:
    """One machine's settings: the prescreen home and BentoML's home inside it (as prescreen sets it)."""
    return {**base, "PRESCREEN_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}


def test_bentofile_pins_every_dependency_within_pyproject() -> None:
    """bentofile.yaml pins exactly pyproject's dependencies, each pin inside pyproject's range."""
    wanted = {
        Requirement(d).name.lower(): Requirement(d)
        for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    python = bentofile["python"]
    assert python["lock_packages"] is False  # locking resolves packages over the network
    pins = {Requirement(p).name.lower(): Requirement(p) for p in python["packages"]}
    assert sorted(pins) == sorted(wanted)
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin} is not pinned"
        assert wanted[name].specifier.contains(spec.version), f"{pin} is outside pyproject's {wanted[name]}"
        assert pin.extras == wanted[name].extras, pin
    assert str(pins["torch"].specifier) == "==2.13.0"
    names = sorted(json.loads(card.read_text())["name"] for card in SHIPPED.glob("*/card.json"))
    assert sorted(m.split(":")[0] for m in bentofile["models"]) == names


@pytest.mark.data
def test_built_bento_serves_a_real_study(shared_data: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    require_peer("uv", uv_installed(), UV_HINT)
    # -- the build machine: shipped models into its store, then the Bento from bentofile.yaml -----
    build_env = home_env(cli_env, tmp_path / "build-home")
    r = run_cli("models", "list", env=build_env)  # imports the shipped models into the store
    assert r.returncode == 0, r.stderr
    tag = bentoml("build", "-o", "tag", env=build_env, cwd=REPO).stdout.strip().rpartition("__tag__:")[2]
    assert re.fullmatch(r"prescreen-service:[a-z0-9]+", tag), tag
    built = tmp_path / "build-home" / "bentoml" / "bentos" / "prescreen-service" / tag.split(":")[1]
    info = yaml.safe_load((built / "bento.yaml").read_text())
    assert info["service"] == "prescreen.serving.service:Prescreen"
    packed = {m["tag"].split(":")[0]: m["tag"] for m in info["models"]}
    assert sorted(packed) == sorted(json.loads(c.read_text())["name"] for c in SHIPPED.glob("*/card.json"))
    assert "torch==2.13.0" in (built / "env" / "python" / "requirements.txt").read_text().splitlines()
    for needed in (
        "shipped/ecg-rhythm/model.onnx",
        "store/migrations/env.py",
        "triage/default_rules.yaml",
        "serving/templates/base.html",
        "serving/static/app.css",
        "serving/locale/zh_CN/LC_MESSAGES/messages.po",
    ):
        assert (built / "src" / "prescreen" / needed).is_file(), needed
    assert not list((built / "src").rglob("__pycache__")), "the Bento carries compiled files"
    archive = tmp_path / "prescreen.tar"  # uncompressed: the default .bento (xz) takes ~40 s here
    bentoml("export", tag, str(archive), env=build_env, cwd=tmp_path)

    # -- the site machine: a fresh home; import the Bento (and its models), serve it by tag -------
    site = tmp_path / "site-home"
    site_env = home_env(cli_env, site)
    bentoml("import", str(archive), env=site_env, cwd=tmp_path)
    src = (site / "bentoml" / "bentos" / "prescreen-service" / tag.split(":")[1] / "src").resolve()
    assert (src / "prescreen" / "serving" / "service.py").is_file()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_env = {**site_env, "PRESCREEN_DICOM_PORT": str(free_port()), "PYTHONVERBOSE": "1"}
    workdir = tmp_path / "run"  # not the repository: nothing there to import by accident
    workdir.mkdir()
    log = tmp_path / "bento-serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*BENTOML, "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
            env=serve_env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"bentoml serve exited {proc.returncode}:\n{not_verbose(log)}"
            return answers_ready(proc, base)

        wait_until(ready, START_TIMEOUT_S, interval=0.5, what=lambda: f"/readyz of the Bento:\n{not_verbose(log)}")

        # a real record: CinC 2017 A00004 is atrial fibrillation, A00001 normal sinus rhythm
        cinc = shared_data / "cinc2017"
        findings = {}
        for record in ("A00004", "A00001"):
            files = [("file", (f"{record}{ext}", (cinc / f"{record}{ext}").read_bytes())) for ext in (".hea", ".dat")]
            resp = httpx.post(f"{base}/v1/screen", files=files, timeout=60)
            assert resp.status_code == 200, resp.text
            findings[record] = resp.json()
        af, normal = findings["A00004"], findings["A00001"]
        assert (af["task"], af["label"], af["flagged"]) == ("ecg-rhythm", "af", True), af
        assert af["probabilities"]["af"] > 0.5 and af["score"] >= af["threshold"], af
        assert (normal["label"], normal["flagged"]) == ("normal", False), normal
        # the model that screened is the one packed in the Bento: the fresh store found it by its digest
        assert f"ecg-rhythm:{af['model']['version']}" == packed["ecg-rhythm"]
        assert json.loads((site / "active.json").read_text())["ecg-rhythm"] == packed["ecg-rhythm"]
    finally:
        stop_process(proc)

    # -- the code that served was the Bento's --------------------------------------------------
    loaded = [Path(m.group(1)) for line in log.read_text(errors="replace").splitlines() if (m := LOADED.match(line))]
    ours = [path for path in loaded if "prescreen" in path.parts and "site-packages" not in path.parts]
    service = [path for path in ours if path.parts[-3:] == ("prescreen", "serving", "service.py")]
    assert service, f"no import of prescreen.serving.service seen in the log:\n{not_verbose(log)}"
    strays = sorted({str(path) for path in ours if not path.resolve().is_relative_to(src)})
    assert not strays, f"served code came from outside the Bento's src/ {src}: {strays[:5]}"
    assert len(service) >= 2  # the CLI that loads the Bento and its worker each imported it
