"""DICOM TLS on the listener: DCMTK's ``storescu +tls`` (BCP 195 profile) stores an instance over TLS
on ``PRESCREEN_DICOM_TLS_PORT`` with the service's certificate; a plain association on that port
fails; without a certificate no TLS listener starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from prescreen.config import Settings
from prescreen.integration.listener import start_listener
from prescreen.pipeline.runtime import open_store
from prescreen.store.schema import Instance
from tests.integration.test_listener import AE_TITLE, HOST, free_port, synthetic, write
from tests.peers import dcmtk


def certificate(folder: Path, name: str) -> tuple[Path, Path]:
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
    )
    return key, crt


@pytest.mark.usefixtures("need_dcmtk")
def test_storescu_over_tls_stores_and_plain_fails(tmp_path: Path) -> None:
    key, crt = certificate(tmp_path, "server")
    client_key, client_crt = certificate(tmp_path, "client")
    settings = Settings(
        home=tmp_path / "home",
        dicom_ae_title=AE_TITLE,
        dicom_tls_port=free_port(),
        tls_cert=crt,
        tls_key=key,
        anonymous_permissions=["ingest"],
    )
    ingestor = open_store(settings)
    server = start_listener(ingestor, settings, host=HOST, tls=True)
    assert server is not None
    try:
        path = write(synthetic(), tmp_path / "cr.dcm")
        storescu = dcmtk("storescu")
        sent = subprocess.run(
            [
                storescu,
                "+tls",
                str(client_key),
                str(client_crt),
                "+cf",
                str(crt),
                "-aec",
                AE_TITLE,
                HOST,
                str(settings.dicom_tls_port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        with ingestor.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 1
        plain = subprocess.run(
            [storescu, "-aec", AE_TITLE, "-to", "5", "-ta", "5", HOST, str(settings.dicom_tls_port), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plain.returncode != 0
    finally:
        server.shutdown()


def test_no_tls_listener_without_a_certificate(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", dicom_tls_port=free_port())
    assert start_listener(open_store(settings), settings, host=HOST, tls=True) is None


def test_a_tls_destination_sends_over_tls_and_checks_the_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prescreen.config import get_settings
    from prescreen.errors import DeliveryError
    from prescreen.integration.dicom_send import DicomDestination, c_store

    key, crt = certificate(tmp_path, "server")
    settings = Settings(
        home=tmp_path / "home",
        dicom_ae_title=AE_TITLE,
        dicom_tls_port=free_port(),
        tls_cert=crt,
        tls_key=key,
        anonymous_permissions=["ingest"],
    )
    ingestor = open_store(settings)
    server = start_listener(ingestor, settings, host=HOST, tls=True)
    assert server is not None
    destination = DicomDestination.parse(f"tls:{AE_TITLE}@{HOST}:{settings.dicom_tls_port}")
    assert destination.tls and str(destination).startswith("tls:")
    try:
        with pytest.raises(DeliveryError):  # a self-signed certificate nobody vouched for is refused
            c_store([synthetic()], destination, calling_ae="SENDER", timeout=10)
        monkeypatch.setenv("PRESCREEN_DICOM_TLS_CA", str(crt))
        get_settings.cache_clear()
        c_store([synthetic()], destination, calling_ae="SENDER", timeout=10)
        with ingestor.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 1
    finally:
        server.shutdown()
