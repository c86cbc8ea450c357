"""A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a temporary folder, on a free port,
``fsync=off``) for the store tests and the worklist benchmark. Run as ``postgres`` when we are root."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_USER = "postgres"


class ClusterUnavailableError(RuntimeError):
    """PostgreSQL cannot be run here (no binaries, or root without a ``postgres`` user)."""


def pg_bin_dir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else the newest Debian/Ubuntu install."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0] or 0)
    )
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """A throwaway PostgreSQL cluster in a temporary folder (run as ``postgres`` when we are root)."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or pg_bin_dir()
        if found is None:
            raise ClusterUnavailableError("initdb/pg_ctl not found (install the Debian package 'postgresql')")
        self.bin_dir = found
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                raise ClusterUnavailableError(
                    f"running as root and there is no {PG_USER!r} user to run the server as"
                ) from None
            self.as_user = PG_USER
        # under /tmp (not $TMPDIR, which may be private to root) so that the server's user reaches it
        self.root = Path(tempfile.mkdtemp(prefix="prescreen-pg-", dir="/tmp" if self.as_user else None))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.sockets.mkdir()
        self.log = self.root / "server.log"
        self.log.touch()
        if self.as_user is not None:
            entry = pwd.getpwnam(self.as_user)
            for path in (self.root, self.sockets, self.log):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        self.port = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        tool = self.bin_dir / args[0]
        cmd = [str(tool) if tool.is_file() else shutil.which(args[0]) or args[0], *args[1:]]
        if self.as_user is not None:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.as_user, "--", *cmd]
            else:
                cmd = ["su", self.as_user, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120, check=False)

    def start(self, conf: str = "", durable: bool = False) -> None:
        """``initdb``, then start the server; ``conf`` is appended to its ``postgresql.conf``;
        ``durable`` keeps fsync and full-page writes on (a base backup needs them)."""
        done = self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        if conf:
            with (self.data / "postgresql.conf").open("a") as out:
                out.write("\n" + conf + "\n")
        self.launch(durable)

    def launch(self, durable: bool = False) -> None:
        """Start the server on the data folder as it is (a free port)."""
        fast = "" if durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        for _ in range(3):  # the free port may be taken in between: try another
            self.port = free_port()
            options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 {fast}-c max_connections=100"
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
            )
            if done.returncode == 0:
                return
        raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{self.log.read_text()}")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/postgres"
