"""Received studies through a real ``prescreen serve`` process: DICOM in by storescu (and ECG
uploads over HTTP) → the durable queue → results, FHIR; and no study lost or screened twice when
the whole server is SIGKILLed right after acknowledging instances."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)
from sqlalchemy import create_engine, text

from tests.e2e.conftest import CLI, START_TIMEOUT_S, answers_ready, free_port
from tests.peers import dcmtk, require_peer

pytestmark = [pytest.mark.e2e, pytest.mark.data]

AE_TITLE = "PRESCREEN"
MAX_UPLOAD = 2_000_000  # above the US sample (0.9 MB): the DICOM listener has the same limit
FINAL = ("screened", "unscreenable", "failed")
PR_SET_CHILD_SUBREAPER = 36
SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "US": UltrasoundImageStorage, "CT": CTImageStorage}


@dataclass
class Served:
    """One ``prescreen serve`` process group."""

    base: str
    dicom_port: int
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.base}{path}", params=params, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        """SIGTERM to the process group (BentoML stops its workers), then SIGKILL what is left."""
        tree = process_tree(self.proc.pid)
        with suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        kill_all(tree)
        self.proc.wait(timeout=20)

    def kill(self) -> list[int]:
        """SIGKILL every process of the server at once, parents first; returns their pids.

        ``os.killpg`` is not enough: BentoML starts its workers (where the listener, the queue
        workers and the database live) in sessions of their own."""
        tree = process_tree(self.proc.pid)
        kill_all(tree)
        self.proc.wait(timeout=20)
        return tree


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (by /proc parent links), parents before children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def reap(pids: list[int], timeout: float = 20) -> None:
    """Wait for killed processes that were re-parented to this (sub-reaper) process."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                break  # not ours (already reaped, or reaped by its own parent)
            time.sleep(0.05)


@contextmanager
def child_subreaper() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants (Linux), so that the workers of a
    SIGKILLed server do not linger as zombies: a zombie's pid still answers ``kill(pid, 0)``,
    which would make its held jobs look alive until their lease expires."""
    libc = ctypes.CDLL(None, use_errno=True)
    subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    require_peer("prctl(PR_SET_CHILD_SUBREAPER)", subreaper, f"Linux >= 3.4 has it (errno {ctypes.get_errno()})")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_server(home: Path, log: Path) -> Served:
    """``prescreen serve`` in its own session (process group), ready when /readyz answers 200
    and the DICOM listener accepts connections."""
    port, dicom_port = free_port(), free_port()
    env = {
        **os.environ,
        "PRESCREEN_HOME": str(home),
        "PRESCREEN_DICOM_PORT": str(dicom_port),
        "PRESCREEN_DICOM_AE_TITLE": AE_TITLE,
        "PRESCREEN_STUDY_QUIET_SECONDS": "1",
        "PRESCREEN_WORKER_POLL_SECONDS": "0.2",
        "PRESCREEN_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "BENTOML_DO_NOT_TRACK": "true",
        # senders without credentials, as on the trusted network of the older contracts (a module-scoped
        # server starts before the per-test environment of tests/conftest.py is set)
        "PRESCREEN_ANONYMOUS_PERMISSIONS": "screen,ingest,studies:read,models:read",
        "PRESCREEN_MFA": "step-up",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", dicom_port, home, proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            assert proc.poll() is None, served.tail()
            assert time.monotonic() < deadline, "server not ready in time:\n" + served.tail()
            if answers_ready(proc, served.base) and _listens(dicom_port):
                return served
            time.sleep(0.3)
    except BaseException:
        served.kill()
        raise


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    server = start_server(root / "home", root / "server.log")
    try:
        yield server
    finally:
        server.stop()


def instance(modality: str, folder: Path, size: int = 64, seed: int = 0) -> tuple[Path, str]:
    """A synthetic image instance in a new study, written to ``folder``; returns (path, study UID)."""
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = f"PID-{seed}"
    ds.SeriesNumber = ds.InstanceNumber = 1
    if modality == "CR":
        ds.BodyPartExamined = "CHEST"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{modality}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def storescu(port: int, path: Path) -> None:
    r = subprocess.run(
        [dcmtk("storescu"), "-aet", "MODALITY", "-aec", AE_TITLE, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def wait_for_uid(served: Served, study_uid: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """The study (list item) once its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        items = served.get("/v1/studies", study_uid=study_uid)["items"]
        if items:
            last = items[0]
            if last["status"] in statuses:
                return dict(last)
        time.sleep(0.5)
    raise AssertionError(f"study {study_uid} not {statuses} in {timeout:g} s: {last}\n{served.tail()}")


def wait_for_id(served: Served, study_id: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = served.get(f"/v1/studies/{study_id}")
        if last["status"] in statuses:
            return dict(last)
        time.sleep(0.5)
    raise AssertionError(f"study {study_id} not {statuses} in {timeout:g} s: {last}\n{served.tail()}")


def blob_count(home: Path) -> int:
    return sum(1 for p in (home / "blobs").rglob("*") if p.is_file())


@pytest.mark.usefixtures("need_dcmtk")
def test_dicom_us_screened(served: Served, shared_data: Path) -> None:
    import pydicom

    path = shared_data / "dicom" / "US1_UNCR.dcm"
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    storescu(served.dicom_port, path)
    item = wait_for_uid(served, study_uid, FINAL, timeout=60)
    assert item["status"] == "screened", item
    assert item["sender"] == "MODALITY"
    detail = served.get(f"/v1/studies/{item['study_id']}")
    assert len(detail["series"]) == 1
    series = detail["series"][0]
    assert series["modality"] == "US" and series["instances"] == 1 and series["status"] == "screened"
    result = series["result"]
    assert result["task"] == "breast-us"
    models = {m["task"]: m for m in served.get("/v1/models")["models"]}
    assert result["model"] == {"name": models["breast-us"]["name"], "version": models["breast-us"]["version"]}
    assert result["label"] in models["breast-us"]["classes"]
    r = httpx.get(f"{served.base}/v1/studies/{item['study_id']}/fhir", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    report = r.json()
    assert report["resourceType"] == "DiagnosticReport"
    assert study_uid in str(report)


@pytest.mark.usefixtures("need_dcmtk")
def test_dicom_nobody_screens_is_unscreenable(served: Served, tmp_path: Path) -> None:
    path, study_uid = instance("CT", tmp_path)
    storescu(served.dicom_port, path)
    item = wait_for_uid(served, study_uid, FINAL, timeout=60)
    assert item["status"] == "unscreenable", item
    detail = served.get(f"/v1/studies/{item['study_id']}")
    [series] = detail["series"]
    assert series["modality"] == "CT" and series["instances"] == 1  # stored, not refused
    assert series["status"] == "unscreenable" and series["result"] is None
    assert "CT" in (series["reason"] or "") and detail["reason"]


def test_ecg_upload_over_http(served: Served, shared_data: Path) -> None:
    cinc = shared_data / "cinc2017"
    record = (cinc / "RECORDS").read_text().split()[1]
    hea, dat = (cinc / f"{record}.hea").read_bytes(), (cinc / f"{record}.dat").read_bytes()
    assert len(hea) + len(dat) < MAX_UPLOAD // 2
    files = [("file", (f"{record}.hea", hea)), ("file", (f"{record}.dat", dat))]
    r = httpx.post(
        f"{served.base}/v1/studies", files=files, data={"institution": "clinic-7", "patient_id": "P7"}, timeout=60
    )
    assert r.status_code == 202, r.text
    study_id = r.json()["study_id"]
    assert r.json()["instances"] == 2
    detail = wait_for_id(served, study_id, FINAL, timeout=60)
    assert detail["status"] == "screened", detail
    # a caller without a token (a sender) sees status and results, not patient identifiers
    assert detail["institution"] == "clinic-7" and detail["patient_id"] is None
    [series] = detail["series"]
    assert series["modality"] == "ECG" and series["result"]["task"] == "ecg-rhythm"
    by_institution = served.get("/v1/studies", institution="clinic-7", limit=500)["items"]
    assert [s["study_id"] for s in by_institution] == [study_id]
    assert study_id in [s["study_id"] for s in served.get("/v1/studies", status="screened", limit=500)["items"]]
    assert study_id not in [s["study_id"] for s in served.get("/v1/studies", status="received", limit=500)["items"]]

    before, blobs_before = served.get("/v1/studies")["total"], blob_count(served.home)
    r = httpx.post(f"{served.base}/v1/studies", files=files, data={"order_priority": "SOON"}, timeout=60)
    assert (r.status_code, r.json()) == (
        400,
        {
            "error": "invalid_study",
            "detail": "order_priority must be one of STAT, HIGH, ROUTINE, MEDIUM, LOW (or S, URGENT, ASAP, A, R)",
        },
    ), r.text
    big = [("file", (f"{record}.hea", hea)), ("file", (f"{record}.dat", dat + bytes(MAX_UPLOAD)))]
    r = httpx.post(f"{served.base}/v1/studies", files=big, data={"institution": "clinic-7"}, timeout=60)
    assert (r.status_code, r.json()) == (
        413,
        {"error": "too_large", "detail": f"the upload exceeds the limit of {MAX_UPLOAD} bytes"},
    ), r.text
    assert served.get("/v1/studies")["total"] == before
    assert blob_count(served.home) == blobs_before
    assert len(served.get("/v1/studies", institution="clinic-7")["items"]) == 1


@pytest.mark.usefixtures("need_dcmtk")
def test_sigkill_after_ack_loses_nothing(tmp_path: Path) -> None:
    require_peer("Linux (/proc, prctl)", sys.platform.startswith("linux"), "CI runs on Linux")
    home = tmp_path / "home"
    log = tmp_path / "server.log"
    sent: list[str] = []
    with child_subreaper():
        first = start_server(home, log)
        killed: list[int] = []
        try:
            for k in range(6):
                path, study_uid = instance(("CR", "US")[k % 2], tmp_path, seed=k)
                storescu(first.dicom_port, path)  # acknowledged: storescu exits 0 only on status 0x0000
                sent.append(study_uid)
        finally:
            killed = first.kill()  # every process of the server, at once
            reap(killed)
    assert len(killed) == 3, killed  # prescreen serve, bentoml serve, its (one) worker
    assert not _listens(first.dicom_port), "a process of the killed server still listens"
    engine = create_engine(f"sqlite:///{home / 'prescreen.db'}")
    try:
        with engine.connect() as db:  # every acknowledged instance survived the kill ...
            rows = db.execute(text("SELECT study_uid, status FROM studies")).all()
            assert {uid for uid, _ in rows} == set(sent)
            assert db.execute(text("SELECT count(*) FROM instances")).scalar() == 6
            keys = db.execute(text("SELECT blob_key FROM instances")).scalars().all()
            assert all((home / "blobs" / k[:2] / k[2:4] / k).is_file() for k in keys)
        # ... and the last study at least was still waiting out its quiet period: the new process has work
        assert any(status not in FINAL for _, status in rows), rows
    finally:
        engine.dispose()
    second = start_server(home, log)
    try:
        studies = {}
        deadline = time.monotonic() + 90
        for study_uid in sent:
            studies[study_uid] = wait_for_uid(second, study_uid, FINAL, timeout=max(1.0, deadline - time.monotonic()))
        for item in studies.values():
            assert item["status"] == "screened", item  # CR CHEST and US: each has a model
            detail = second.get(f"/v1/studies/{item['study_id']}")
            assert len(detail["series"]) == 1 and detail["series"][0]["instances"] == 1, detail
            assert detail["series"][0]["result"] is not None, detail
    finally:
        second.stop()
    engine = create_engine(f"sqlite:///{home / 'prescreen.db'}")
    try:
        with engine.connect() as db:
            assert db.execute(text("SELECT count(*) FROM studies")).scalar() == 6
            twice = db.execute(text("SELECT job_id FROM results GROUP BY job_id HAVING count(*) > 1")).all()
            assert twice == []
            per_series = db.execute(
                text(
                    "SELECT s.id, (SELECT count(*) FROM jobs j WHERE j.series_id = s.id),"
                    " (SELECT count(*) FROM results r WHERE r.series_id = s.id),"
                    " (SELECT status FROM studies st WHERE st.id = s.study_id) FROM series s"
                )
            ).all()
            assert len(per_series) == 6
            for series_id, jobs, results, status in per_series:
                assert jobs == 1, (series_id, jobs)  # one screening round: no late instance
                assert results == (1 if status == "screened" else 0), (series_id, results, status)
    finally:
        engine.dispose()
