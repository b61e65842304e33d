"""Live Tunery servers for end-to-end tests, driven over HTTP like a user with curl.

`embedded()` runs `tunery serve` (SQLite, the filesystem broker, local artifacts).
`distributed()` runs `tunery api`, `tunery worker` and `tunery inference` as separate
processes on Postgres and Redis. `for_backend()` picks one of the two for a test's backend.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import backends


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    base_url: str
    data_dir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def start(self, name: str, args: list[str]) -> None:
        log = self.data_dir / f"{name}.log"
        self.logs[name] = log
        self.commands[name] = list(args)
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self, name: str) -> None:
        """SIGKILL the process group: no cleanup runs, like a crash or the OOM killer."""
        self.stop(name, signal.SIGKILL)

    def restart(self, name: str, ready_url: str | None = None) -> None:
        """Start a stopped (or killed) process again with the arguments it had."""
        self.stop(name)
        self.start(name, self.commands[name])
        if ready_url is not None:
            self.wait_ready(ready_url)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log_tail(self, chars: int = 4000) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"----- {name} -----\n{text[-chars:]}")
        return "\n".join(parts)

    def wait_ready(self, url: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{url} not up after {timeout}s\n{self.log_tail()}")


def _base_env(data_dir: Path, models_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env.update(
        TUNERY_DATA_DIR=str(data_dir),
        TUNERY_MODELS_DIR=str(models_dir),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        TUNERY_RECONCILE_EVERY_SECONDS="2",
    )
    return env


@contextmanager
def embedded(data_dir: Path, models_dir: Path, **extra_env: str) -> Iterator[LiveServer]:
    port = free_port()
    env = _base_env(data_dir, models_dir) | extra_env
    server = LiveServer(f"http://127.0.0.1:{port}", data_dir, env)
    data_dir.mkdir(parents=True, exist_ok=True)
    server.start("serve", ["serve", "--port", str(port)])
    try:
        server.wait_ready(f"{server.base_url}/healthz")
        yield server
    finally:
        server.stop_all()


@contextmanager
def api_only(data_dir: Path, models_dir: Path, **extra_env: str) -> Iterator[LiveServer]:
    """`tunery api` alone (SQLite and the filesystem broker unless extra_env says otherwise):
    no worker takes jobs, no inference server answers."""
    port = free_port()
    env = _base_env(data_dir, models_dir) | extra_env
    env.setdefault("TUNERY_INFERENCE_URL", f"http://127.0.0.1:{free_port()}")
    data_dir.mkdir(parents=True, exist_ok=True)
    server = LiveServer(f"http://127.0.0.1:{port}", data_dir, env)
    server.start("api", ["api", "--port", str(port)])
    try:
        server.wait_ready(f"{server.base_url}/healthz")
        yield server
    finally:
        server.stop_all()


# pass it as `inference` (positional-only, so that a `**env` of strings cannot land in it)
WITHOUT_INFERENCE = False


@contextmanager
def distributed(
    data_dir: Path,
    models_dir: Path,
    database_url: str,
    redis_url: str,
    inference: bool = True,
    /,
    **extra_env: str,
) -> Iterator[LiveServer]:
    """api, worker and inference processes; `inference=False` leaves the inference server
    out (nothing listens at TUNERY_INFERENCE_URL) for a test that never serves a model: it
    spares a process that loads torch."""
    api_port, inference_port = free_port(), free_port()
    env = _base_env(data_dir, models_dir) | extra_env
    env.update(
        TUNERY_DATABASE_URL=database_url,
        TUNERY_BROKER_URL=redis_url,
        TUNERY_QUEUE=f"tunery-test-{uuid.uuid4().hex[:8]}",
        TUNERY_INFERENCE_URL=f"http://127.0.0.1:{inference_port}",
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    server = LiveServer(f"http://127.0.0.1:{api_port}", data_dir, env)
    # the inference server needs no database: it loads torch while the schema is built
    if inference:
        server.start("inference", ["inference", "--port", str(inference_port)])
    try:
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            env=env,
            check=True,
            capture_output=True,
        )
    except BaseException:
        server.stop_all()
        raise
    server.start("api", ["api", "--port", str(api_port)])
    server.start("worker", ["worker", "--loglevel", "INFO"])
    try:
        server.wait_ready(f"{server.base_url}/healthz")
        if inference:
            server.wait_ready(f"http://127.0.0.1:{inference_port}/healthz")
        yield server
    finally:
        server.stop_all()


# how often a test asks a live server whether something is done: each poll is one cheap GET,
# and every half second a walk waits past the end adds up over the suite's many waits
POLL_SECONDS = 0.2


def wait_for(
    client: httpx.Client, path: str, done: set[str], timeout: float = 300.0, key: str = "status"
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(path).json()
        if body.get(key) in done:
            return body
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{path} still {body.get(key)!r} after {timeout}s: {body}")


@contextmanager
def for_backend(
    backend: backends.Backend,
    data_dir: Path,
    models_dir: Path,
    inference: bool = True,
    /,
    **extra_env: str,
) -> Iterator[LiveServer]:
    """`embedded()` on SQLite; `distributed()` on a fresh Postgres database and Redis, without
    its inference server when `inference` is False (`tunery serve` always starts one)."""
    if backend.name == "sqlite":
        with embedded(data_dir, models_dir, **extra_env) as server:
            yield server
    else:
        with (
            backends.fresh_postgres_database() as url,
            distributed(
                data_dir, models_dir, url, backends.REDIS_URL, inference, **extra_env
            ) as server,
        ):
            yield server
