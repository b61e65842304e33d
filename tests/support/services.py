"""Private Redis and Postgres servers that fault tests may restart, wipe and kill.

The shared servers on 6379 and 5432 belong to every test run on the machine: a test that
injects faults starts its own, on a free port, in a temporary folder, and stops it after.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from tests.support.live import free_port


def _wait_port(port: int, up: bool, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} still {'down' if up else 'up'} after {timeout}s")


# -- Redis -------------------------------------------------------------------------------------


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


@dataclass
class PrivateRedis:
    """A redis-server without persistence (`--save "" --appendonly no`): a restart wipes it."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        # nothing survives a restart: no RDB snapshots, no append-only file
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        """SIGKILL: whatever it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _wait_port(self.port, up=False)

    def restart_wiped(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def keys(self) -> list[str]:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            return sorted(k.decode() for k in cast(list[bytes], client.keys("*")))
        finally:
            client.close()


@contextmanager
def private_redis(folder: Path) -> Iterator[PrivateRedis]:
    folder.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- Postgres ----------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


def private_postgres_available() -> str | None:
    """None when a private cluster can be made here, else why not."""
    if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
        return "initdb/pg_ctl not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


@dataclass
class PrivatePostgres:
    """A throw-away Postgres cluster (initdb into a temporary folder, fsync off)."""

    folder: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = list(args)
        if os.geteuid() == 0:  # postgres refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, check=check, timeout=60)

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        initdb = _pg_bin("initdb")
        assert initdb is not None
        self._run(
            initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        log = str(self.folder / "pg.log")
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, down_seconds: float = 0.0, mode: str = "immediate") -> None:
        """Stop (immediate: like a crash, every connection cut) and start again."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None


@contextmanager
def private_postgres(folder: Path | None = None) -> Iterator[PrivatePostgres]:
    """A cluster in `folder`, or in a new folder under the system's temporary directory
    (pytest's tmp_path is private to root, where the postgres user cannot enter)."""
    if folder is None or os.geteuid() == 0:
        folder = Path(tempfile.mkdtemp(prefix="tunery-pg-"))
    server = PrivatePostgres(folder)
    server.init()
    server.start()
    try:
        yield server
    finally:
        pid = server.postmaster_pid()
        server.stop("immediate")
        if pid is not None:  # pg_ctl could not stop it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
