"""DICOM TLS on the listener: DCMTK's ``storescu +tls`` (BCP 195 profile) stores an instance over TLS
on ``PRESCREEN_DICOM_TLS_PORT`` with the service's certificate; a plain association on that port
fails; without a certificate no TLS listener starts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from prescreen.config import Settings, get_settings
from prescreen.errors import DeliveryError
from prescreen.integration.dicom_send import DicomDestination, c_store
from prescreen.integration.listener import start_listener
from prescreen.pipeline.runtime import open_store
from prescreen.store.ingest import Ingestor
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


@dataclass
class TlsListener:
    ingestor: Ingestor
    port: int
    certificate: Path

    def instances(self) -> int:
        with self.ingestor.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[TlsListener]:
    """A DICOM TLS listener with a self-signed server certificate, taking anonymous senders."""
    key, crt = certificate(tmp_path, "server")
    settings = Settings(
        home=tmp_path / "home",
        dicom_ae_title=AE_TITLE,
        dicom_tls_port=free_port(),
        tls_cert=crt,
        tls_key=key,
        anonymous_permissions=["ingest"],
    )
    server = start_listener(ingestor := open_store(settings), settings, host=HOST, tls=True)
    assert server is not None
    yield TlsListener(ingestor, settings.dicom_tls_port, crt)
    server.shutdown()


@pytest.mark.usefixtures("need_dcmtk")
def test_storescu_over_tls_stores_and_plain_fails(tls_listener: TlsListener, tmp_path: Path) -> None:
    client_key, client_crt = certificate(tmp_path, "client")
    path = write(synthetic(), tmp_path / "cr.dcm")
    storescu = dcmtk("storescu")
    port = str(tls_listener.port)
    trusted = ["+tls", str(client_key), str(client_crt), "+cf", str(tls_listener.certificate)]
    sent = subprocess.run(
        [storescu, *trusted, "-aec", AE_TITLE, HOST, port, str(path)], capture_output=True, text=True, timeout=60
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert tls_listener.instances() == 1
    plain = subprocess.run(
        [storescu, "-aec", AE_TITLE, "-to", "5", "-ta", "5", HOST, port, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode != 0


def test_no_tls_listener_without_a_certificate(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", dicom_tls_port=free_port())
    assert start_listener(open_store(settings), settings, host=HOST, tls=True) is None


def test_a_tls_destination_sends_over_tls_and_checks_the_certificate(
    tls_listener: TlsListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = DicomDestination.parse(f"tls:{AE_TITLE}@{HOST}:{tls_listener.port}")
    assert destination.tls and str(destination).startswith("tls:")
    with pytest.raises(DeliveryError):  # a self-signed certificate nobody vouched for is refused
        c_store([synthetic()], destination, calling_ae="SENDER", timeout=10)
    assert tls_listener.instances() == 0
    monkeypatch.setenv("PRESCREEN_DICOM_TLS_CA", str(tls_listener.certificate))
    get_settings.cache_clear()
    c_store([synthetic()], destination, calling_ae="SENDER", timeout=10)
    assert tls_listener.instances() == 1
