"""Job-status GET against Postgres, as a ratio to a bare FastAPI JSON endpoint (same run).

    python bench/api.py [--requests 2000] [--concurrency 16] [--rounds 3]
                        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

It creates a throw-away database next to --database-url, applies the migrations, inserts one
running job plus a few hundred finished ones, and starts two single-process uvicorn servers:
`tunery api` on that database, and a bare FastAPI app whose one route returns the same JSON
body from memory. One httpx client drives both alike (warm-up, then --requests GETs with
--concurrency in flight), alternating for --rounds rounds; the best round of each is shown.
The goal is a throughput ratio of at least 0.5; missing it is reported, not an error. It exits
non-zero only when something failed, and stops every process and drops the database it made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.5
JOB_PATH = "/v1/fine_tuning/jobs/{job_id}"
OTHER_JOBS = 400


class BenchError(Exception):
    pass


# --- the baseline server (run as a child: bench/api.py --serve-baseline PORT BODY_FILE) ----


def serve_baseline(port: int, body_file: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    body: dict[str, Any] = json.loads(Path(body_file).read_text())
    app = FastAPI()

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return body

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # the same uvicorn settings as `tunery api` (log level info, so access logs alike)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", timeout_graceful_shutdown=5)


# --- the database ------------------------------------------------------------------------


@contextmanager
def bench_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server of `server_url`, dropped on the way out."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"tunery_bench_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def server_version(server_url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(server_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


def seed_jobs(database_url: str) -> str:
    """Migrate, insert the job under test and OTHER_JOBS finished ones; return its id."""
    from sqlalchemy.orm import Session

    from app.db import make_engine
    from app.ids import new_id
    from app.migrate import upgrade
    from app.tables import JobRow

    upgrade(database_url)
    now = time.time()
    hyperparameters = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    lora = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None}

    def job(status: str, index: int) -> JobRow:
        job_id = new_id("ftjob")
        row = JobRow(
            id=job_id,
            model="sentence-transformers/all-MiniLM-L6-v2",
            task="classification",
            status=status,
            created_at=int(now) - index,
            started_at=int(now) - index,
            training_file=new_id("file"),
            validation_file=None,
            hyperparameters=hyperparameters,
            method=method,
            training_type=lora,
            seed=42,
            suffix="bench",
            user_metadata={"team": "bench"},
            result_files=[],
            progress={"step": 120, "total_steps": 300, "epoch": 1.2},
            attempt=1,
        )
        if status == "running":
            # a live lease, so the API's reconciler leaves the job alone
            row.lease_owner = "bench"
            row.lease_expires_at = now + 24 * 3600
            row.estimated_finish = int(now) + 600
        else:
            row.finished_at = int(now) - index + 300
            row.progress = {"step": 300, "total_steps": 300, "epoch": 3.0}
        if status == "succeeded":
            row.fine_tuned_model = f"ft:sentence-transformers/all-MiniLM-L6-v2:bench:{job_id}"
            row.trained_tokens = 123_456
            row.result_step = 300
            row.result_reason = "final"
            row.n_validation = 80
        if status == "failed":
            row.error = {"code": "invalid_training_file", "message": "line 3: no label"}
        return row

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            target = job("running", 0)
            finished = ("succeeded", "failed", "cancelled")
            session.add(target)
            session.add_all(job(finished[i % 3], i + 1) for i in range(OTHER_JOBS))
            session.commit()
            return target.id
    finally:
        engine.dispose()


# --- the servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process (Linux /proc), else None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode} before answering:\n"
                    + self.log_tail()
                )
            with suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise BenchError(
            f"{self.name} did not answer /healthz in {timeout:.0f}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_server(
    name: str, argv: Callable[[int], list[str]], env: dict[str, str], log_dir: Path
) -> Server:
    port = free_port()
    log_path = log_dir / f"{name.replace(' ', '-')}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv(port),
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    return Server(name, port, proc, log_path)


# --- the load ----------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    errors: list[str]
    cpu_seconds: float | None

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive_httpx(
    host: str, port: int, path: str, total: int, concurrency: int
) -> tuple[float, list[float], list[str]]:
    url = f"http://{host}:{port}{path}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    tickets = iter(range(total))  # shared by the clients: each request is taken once
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def one_client() -> None:
            for _ in tickets:
                started = time.perf_counter()
                try:
                    response = await client.get(url)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        return time.perf_counter() - began, latencies, errors


async def drive_raw(
    host: str, port: int, path: str, total: int, concurrency: int
) -> tuple[float, list[float], list[str]]:
    """Keep-alive HTTP/1.1 GETs on bare asyncio streams: about a tenth of httpx's CPU per
    request, so that on a small machine the client is not what limits the bare server."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()
    latencies: list[float] = []
    errors: list[str] = []
    tickets = iter(range(total))

    async def one_client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in tickets:
                started = time.perf_counter()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise BenchError(f"response without Content-Length: {head[:200]!r}")
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                status = int(head.split(b" ", 2)[1])
                if status != 200:
                    errors.append(f"HTTP {status}: {body[:200]!r}")
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    began = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies, errors


DRIVERS = {"raw": drive_raw, "httpx": drive_httpx}


def measure(server: Server, path: str, total: int, concurrency: int, client: str) -> Result:
    before = server.cpu_seconds()
    drive = DRIVERS[client]
    seconds, latencies, errors = asyncio.run(
        drive("127.0.0.1", server.port, path, total, concurrency)
    )
    after = server.cpu_seconds()
    cpu = after - before if before is not None and after is not None else None
    return Result(total, seconds, latencies, errors, cpu)


# --- the run -----------------------------------------------------------------------------


def report(baseline: Result, tunery: Result) -> None:
    def cpu_ms(r: Result) -> str:
        return f"{1000 * r.cpu_seconds / r.requests:.2f}" if r.cpu_seconds is not None else "-"

    def busy(r: Result) -> str:
        return f"{100 * r.cpu_seconds / r.seconds:.0f}%" if r.cpu_seconds is not None else "-"

    header = (
        f"{'':26} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server CPU ms/req':>17} {'server busy':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, r in (("bare FastAPI (baseline)", baseline), ("tunery api on Postgres", tunery)):
        print(
            f"{name:26} {r.throughput:10.0f} {1000 * r.percentile(0.5):8.2f} "
            f"{1000 * r.percentile(0.99):8.2f} {cpu_ms(r):>17} {busy(r):>11}"
        )
    throughput_ratio = tunery.throughput / baseline.throughput
    p50_ratio = baseline.percentile(0.5) / tunery.percentile(0.5)
    p99_ratio = baseline.percentile(0.99) / tunery.percentile(0.99)
    print(f"{'ratio tunery/bare':26} {throughput_ratio:9.2f}x {p50_ratio:7.2f}x {p99_ratio:7.2f}x")
    print("(latency ratios are bare/tunery, so for every ratio 1.00x = as fast as bare)")
    verdict = "met" if throughput_ratio >= GOAL else "NOT met"
    print(f"goal: throughput ratio >= {GOAL}x: {verdict} ({throughput_ratio:.2f}x)")
    if baseline.cpu_seconds is not None and baseline.cpu_seconds / baseline.seconds < 0.7:
        print(
            "note: the baseline server was idle much of the run, so the client, not the server, "
            "set its pace and the ratio overstates Tunery; use --client raw or more --concurrency"
        )


def run(args: argparse.Namespace) -> int:
    print(
        f"bench/api.py: {args.requests} GETs x {args.rounds} rounds, {args.concurrency} in "
        f"flight, {args.client} client, 1 uvicorn worker each; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"Postgres {server_version(args.database_url)}",
        flush=True,
    )
    servers: list[Server] = []
    with (
        tempfile.TemporaryDirectory(prefix="tunery-bench-") as tmp,
        bench_database(args.database_url) as database_url,
    ):
        try:
            tmp_dir = Path(tmp)
            job_id = seed_jobs(database_url)
            path = JOB_PATH.format(job_id=job_id)
            env = dict(os.environ)
            env.update(
                TUNERY_DATABASE_URL=database_url,
                TUNERY_DATA_DIR=str(tmp_dir / "data"),
                TUNERY_BROKER_URL=args.broker_url,
                PYTHONUNBUFFERED="1",
            )
            tunery = start_server(
                "tunery api",
                lambda port: [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "api",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env,
                tmp_dir,
            )
            servers.append(tunery)
            tunery.wait_ready()
            response = httpx.get(tunery.base_url + path, timeout=10)
            if response.status_code != 200 or response.json().get("id") != job_id:
                raise BenchError(
                    f"GET {path} answered {response.status_code}: {response.text[:300]}"
                )
            body_file = tmp_dir / "job.json"
            body_file.write_bytes(response.content)

            bare = start_server(
                "bare FastAPI",
                lambda port: [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-baseline",
                    str(port),
                    str(body_file),
                ],
                env,
                tmp_dir,
            )
            servers.append(bare)
            bare.wait_ready()
            if httpx.get(bare.base_url + path, timeout=10).json() != response.json():
                raise BenchError("the baseline does not answer the same body as the API")

            warmup = max(100, args.requests // 10)
            for server in (bare, tunery):
                measure(server, path, warmup, args.concurrency, args.client)

            best: dict[str, Result] = {}
            for _ in range(args.rounds):
                for server in (bare, tunery):
                    result = measure(server, path, args.requests, args.concurrency, args.client)
                    if result.errors:
                        raise BenchError(
                            f"{server.name}: {len(result.errors)} of {args.requests} requests "
                            f"failed; first: {result.errors[0]}"
                        )
                    if server.name not in best or result.throughput > best[server.name].throughput:
                        best[server.name] = result
            report(best[bare.name], best[tunery.name])
            return 0
        finally:
            for server in servers:
                server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="GETs per round and server")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best is kept")
    parser.add_argument(
        "--client",
        choices=sorted(DRIVERS),
        default="raw",
        help="raw: keep-alive HTTP/1.1 on asyncio streams (light); httpx: httpx.AsyncClient",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TUNERY_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a Postgres server (any database on it); the bench creates and drops its own",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("TUNERY_BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"),
        help="given to the API (a GET does not touch it)",
    )
    parser.add_argument(
        "--serve-baseline", nargs=2, metavar=("PORT", "BODY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:  # run from a checkout without the editable install
        sys.path.insert(0, str(ROOT))
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), args.serve_baseline[1])
        return 0
    if args.requests < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--requests, --concurrency and --rounds must be at least 1")

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    # also when started in the background by a shell, which makes it ignore SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench/api.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/api.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
