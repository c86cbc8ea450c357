"""Data-protection benchmark: what SM4-GCM at rest costs on ingest, and how long a restore takes.

Measures in-process on this machine, in one run:

1. Blob writes: ``FileBlobStore.put`` (plain, fsynced) vs ``SealedBlobStore.put`` (HMAC-SM3 address,
   SM4-GCM, fsynced) of the same 130 kB CR-sized payloads; MB/s and the ratio sealed/plain.
2. Ingest: ``store_instance`` of fresh synthetic CR instances (parse, blob, rows, audit record) into a
   plain and a sealed store; instances/s and the ratio. The C-STORE and STOW-RS paths add the same
   network work to both, so this ratio is the upper bound of what encryption costs them.
3. C-STORE and STOW-RS with and without encryption: the DICOM listener (in this process, on a real
   port) receiving DCMTK ``storescu`` associations, and ``POST /dicomweb/studies`` through the app
   (in-process ASGI client), into a plain store, a sealed store, and a sealed store with continuous
   capture to a replica folder (every blob written twice); instances/s and the ratios, alternating
   the order of the stores over ``--rounds``.
4. Restore drill: ``--studies`` studies of one CR instance each are ingested into a sealed store, a
   full backup set is taken, the home is restored into an empty folder; seconds for each, MB/s, and
   the time a restore would take for a store of ``--store-gb`` GB at the measured rate.

Usage: ``python benchmarks/bench_protect.py [--blobs 300] [--instances 300] [--network 120] [--rounds 3]
[--studies 1000] [--store-gb 500] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import free_port, lab_env, write_section
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from prescreen.config import Settings, get_settings
from prescreen.integration.listener import start_listener
from prescreen.security.keyring import keyring_for
from prescreen.store.backup import restore, take_backup
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import Ingestor, dicom_meta, store_instance
from prescreen.store.sealed import SealedBlobStore

SIZE = 256  # 256 x 256 x 16 bit: ~130 kB, a small CR


def cr(seed: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality, ds.PatientID, ds.PatientName = "CR", f"BENCH-{seed}", "张三丰"
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (SIZE, SIZE), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def open_ingestor(root: Path, name: str, sealed: bool, replica: bool) -> Ingestor:
    url = f"sqlite:///{root / name}.db"
    migrate(url)
    files = FileBlobStore(root / f"{name}-blobs", root / f"{name}-replica" if replica else None)
    blobs = SealedBlobStore(files, keyring_for(get_settings())) if sealed else files
    return Ingestor(session_factory(make_engine(url)), blobs)  # type: ignore[arg-type]


def cstore_seconds(ingestor: Ingestor, folder: Path, files: list[bytes]) -> float:
    """Seconds for one ``storescu`` association storing ``files`` into a listener on ``ingestor``."""
    folder.mkdir(parents=True)
    paths = []
    for i, data in enumerate(files):
        path = folder / f"{i:05d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    port = free_port()
    server = start_listener(
        ingestor, get_settings().model_copy(update={"dicom_port": port, "dicom_ae_title": "PRESCREEN"})
    )
    assert server is not None
    try:
        start = time.perf_counter()
        done = subprocess.run(
            ["storescu", "-aet", "BENCH", "-aec", "PRESCREEN", "127.0.0.1", str(port), *paths],
            capture_output=True,
            text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        seconds = time.perf_counter() - start
    finally:
        server.shutdown()
    if done.returncode != 0 or "Failed" in done.stderr:
        raise SystemExit(f"storescu failed ({done.returncode}): {done.stderr[-300:]}")
    return seconds


def stow_seconds(ingestor: Ingestor, files: list[bytes], batch: int = 10) -> float:
    """Seconds to POST ``files`` to ``/dicomweb/studies`` in batches, through the app in-process."""
    from fastapi.testclient import TestClient

    from prescreen.serving.app import create_app

    app = create_app()
    app.state.ingestor = ingestor
    client = TestClient(app)
    bodies = []
    for i in range(0, len(files), batch):
        boundary = f"bench-{i}"
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body = b"".join(head + part + b"\r\n" for part in files[i : i + batch]) + f"--{boundary}--\r\n".encode()
        bodies.append((body, f'multipart/related; type="application/dicom"; boundary={boundary}'))
    start = time.perf_counter()
    for body, content_type in bodies:
        r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        if r.status_code != 200:
            raise SystemExit(f"STOW-RS answered {r.status_code}: {r.text[:300]}")
    return time.perf_counter() - start


def network_paths(root: Path, count: int, rounds: int) -> dict[str, float]:
    """C-STORE and STOW-RS instances/s per store kind (median over rounds, order alternated)."""
    kinds = {"plain": (False, False), "sealed": (True, False), "sealed + replica": (True, True)}
    measured: dict[str, dict[str, list[float]]] = {"C-STORE": {k: [] for k in kinds}, "STOW-RS": {k: [] for k in kinds}}
    seed = 50_000
    for r in range(rounds):
        order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
        for kind in order:
            sealed, replica = kinds[kind]
            name = f"net-{r}-{kind.replace(' + ', '-')}"
            ingestor = open_ingestor(root, name, sealed, replica)
            files = [cr(seed + i) for i in range(count)]
            seed += count
            measured["C-STORE"][kind].append(rate(count, cstore_seconds(ingestor, root / f"{name}-files", files)))
            files = [cr(seed + i) for i in range(count)]
            seed += count
            measured["STOW-RS"][kind].append(rate(count, stow_seconds(ingestor, files)))
            ingestor.sessions.kw["bind"].dispose()
    rows: dict[str, float] = {}
    for path, by_kind in measured.items():
        medians = {kind: statistics.median(values) for kind, values in by_kind.items()}
        for kind, value in medians.items():
            rows[f"{path}, {kind} store (instances/s)"] = value
        rows[f"{path} sealed / plain (time ratio)"] = medians["plain"] / medians["sealed"]
        rows[f"{path} sealed + replica / plain (time ratio)"] = medians["plain"] / medians["sealed + replica"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=300)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--network", type=int, default=120, help="instances per C-STORE / STOW-RS round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--store-gb", type=float, default=500.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        os.environ["PRESCREEN_HOME"] = str(root / "home")
        os.environ.update(lab_env({}))  # a lab network: anonymous ingest, as the other benchmarks
        get_settings.cache_clear()
        settings = get_settings()
        ring = keyring_for(settings)
        payloads = [os.urandom(SIZE * SIZE * 2) for _ in range(args.blobs)]
        megabytes = sum(map(len, payloads)) / 1e6
        plain_files = FileBlobStore(root / "plain")
        start = time.perf_counter()
        for data in payloads:
            plain_files.put(data)
        plain_s = time.perf_counter() - start
        sealed_files = SealedBlobStore(FileBlobStore(root / "sealed"), ring)
        start = time.perf_counter()
        for data in payloads:
            sealed_files.put(data)
        sealed_s = time.perf_counter() - start

        def ingest(blobs: object, name: str, count: int) -> float:
            url = f"sqlite:///{root / name}.db"
            migrate(url)
            sessions = session_factory(make_engine(url))
            files = [cr(i) for i in range(count)]
            start = time.perf_counter()
            for data in files:
                store_instance(sessions, blobs, data, dicom_meta(data, sender="BENCH"))  # type: ignore[arg-type]
            return time.perf_counter() - start

        plain_ingest = ingest(FileBlobStore(root / "plain-ingest"), "plain", args.instances)
        sealed_ingest = ingest(SealedBlobStore(FileBlobStore(root / "sealed-ingest"), ring), "sealed", args.instances)

        network = network_paths(root, args.network, args.rounds)

        # the restore drill: a sealed home of --studies studies, a full backup, a restore into an empty home
        from prescreen.pipeline.runtime import open_store

        store = open_store(settings)
        for i in range(args.studies):
            store.store_dicom(cr(10_000 + i), sender="BENCH")
        home_mb = sum(p.stat().st_size for p in (root / "home").rglob("*") if p.is_file()) / 1e6
        start = time.perf_counter()
        take_backup(settings, store.sessions, root / "backups", "full")
        backup_s = time.perf_counter() - start
        target = Settings(
            home=root / "restored", master_key_file=settings.master_key_file or root / "home/keys/master.key"
        )
        start = time.perf_counter()
        restore(target, root / "backups")
        restore_s = time.perf_counter() - start
    restore_mb_s = home_mb / restore_s
    hours = args.store_gb * 1000 / restore_mb_s / 3600
    rows = {
        "blob write, plain (MB/s)": megabytes / plain_s,
        "blob write, sealed SM4-GCM (MB/s)": megabytes / sealed_s,
        "blob write sealed / plain (time ratio)": sealed_s / plain_s,
        "ingest, plain store (instances/s)": rate(args.instances, plain_ingest),
        "ingest, sealed store (instances/s)": rate(args.instances, sealed_ingest),
        "ingest sealed / plain (time ratio)": sealed_ingest / plain_ingest,
        **network,
        f"full backup of {args.studies} studies, {home_mb:.0f} MB (s)": backup_s,
        f"restore of {args.studies} studies into an empty home (s)": restore_s,
        "restore rate (MB/s)": restore_mb_s,
        f"restore of a {args.store_gb:.0f} GB store at that rate (h)": hours,
    }
    extra = [
        f"- {args.blobs} blobs of {SIZE * SIZE * 2 / 1e3:.0f} kB; {args.instances} synthetic {SIZE}x{SIZE} CR "
        "instances per store; every write fsynced. The restore figure counts copying and decrypting the "
        "database snapshot and copying the (already sealed) blobs; `prescreen restore` then migrates and "
        "verifies the audit chain, and the service needs its usual start (~20 s) to be ready.",
        f"- C-STORE: one DCMTK `storescu` association of {args.network} fresh CR instances (TCP_NODELAY=1) into "
        f"the listener running in this process; STOW-RS: batches of 10 through the app in-process; "
        f"median of {args.rounds} rounds, store order alternated. 'replica' writes every blob a second "
        "time, fsynced, to another folder (here the same disk; on another disk the writes overlap less).",
        f"- Goal: restore + ready within 1 hour. At the measured rate that holds for a store of about "
        f"{restore_mb_s * 3600 / 1000 * 0.9:.0f} GB on this disk; a larger store needs a faster disk or "
        "restores its database first and its blobs while serving (not built).",
    ]
    write_section(
        "Data protection: SM4-GCM at rest and the restore drill", "In-process, one run.", rows, extra, args.out
    )


if __name__ == "__main__":
    sys.exit(main())
