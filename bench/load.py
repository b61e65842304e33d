"""Load on the control plane: many clients polling 1,000 queued jobs, and a 1 GB upload.

    python bench/load.py [--jobs 1000] [--clients 200] [--interval 0.5] [--duration 20]
                         [--upload-mb 1000] [--database-url URL | --sqlite] [--broker-url URL]

It starts `tunery api` alone (one uvicorn process; no worker, so every job stays queued) on
a throw-away database: a fresh one on the Postgres server of --database-url (default: the
one on 127.0.0.1:5432 when it answers), else SQLite in a temporary folder. Then:

1. Creates --jobs fine-tuning jobs through the API (POST /v1/fine_tuning/jobs).
2. Baseline, then load: --clients clients each send one GET every --interval seconds for
   --duration seconds (an open loop, as status pollers do); the baseline polls /healthz
   (no database), the load polls random jobs' status. Prints the rate, p50/p95/p99/max and
   the ratio of each to the baseline. Goal: status p99 under 50 ms, no request failed.
3. Checks that nothing was lost: every created job is listed, still waiting for a worker.
4. Uploads a file of --upload-mb MB streamed from a generator (never held in memory,
   by this client or, the point here, by the API) and samples the API process's resident
   memory (RSS) every 20 ms. Baseline: the same for a 10 MB upload. Goal: the big upload
   grows the API's RSS by less than 100 MB over its RSS before the upload.

It asserts nothing (tests do): it prints figures and whether each goal was met, and exits
non-zero only when something failed (a server did not start, a request errored, a job was
lost). Linux only (RSS is read from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

P99_GOAL_MS = 50.0
RSS_GOAL_MB = 100.0
MB = 1_000_000
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class BenchError(Exception):
    pass


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_answers(url: str) -> bool:
    try:
        import psycopg

        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


@contextmanager
def throwaway_database(server_url: str | None, folder: Path) -> Iterator[str]:
    if server_url is None:
        yield f"sqlite:///{folder / 'tunery.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"tunery_load_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Api:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BenchError("no VmRSS in /proc (Linux only)")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the API process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def api_server(env: dict[str, str], folder: Path) -> Iterator[Api]:
    port = free_port()
    log = folder / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = Api(proc, port, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise BenchError(f"tunery api exited early:\n{api.log_tail()}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{api.base_url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"tunery api did not start:\n{api.log_tail()}")
            time.sleep(0.3)
        yield api
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- 1,000 jobs and many pollers ---------------------------------------------------------------


def training_rows(n: int = 20) -> bytes:
    rows = [{"text": f"example {i}", "label": "ab"[i % 2]} for i in range(n)]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


async def create_jobs(base_url: str, count: int, in_flight: int = 8) -> list[str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        upload = await client.post("/v1/files", files={"file": ("train.jsonl", training_rows())})
        if upload.status_code != 200:
            raise BenchError(f"upload failed: {upload.status_code} {upload.text}")
        body = {"model": "tiny-bert", "training_file": upload.json()["id"]}
        ids: list[str] = []
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                response = await client.post("/v1/fine_tuning/jobs", json=body)
            if response.status_code != 200:
                raise BenchError(f"job create failed: {response.status_code} {response.text}")
            ids.append(response.json()["id"])

        await asyncio.gather(*(one() for _ in range(count)))
        return ids


@dataclass
class Latencies:
    name: str
    seconds: float
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_cpu: float = 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def rate(self) -> float:
        return len(self.samples) / self.seconds


async def poll(
    port: int, paths: list[str], clients: int, interval: float, duration: float, name: str
) -> Latencies:
    """Each client keeps one HTTP/1.1 keep-alive connection and sends one GET every
    `interval` s (an open loop: a slow answer does not slow the schedule down, the next
    request only goes at once). Bare asyncio streams rather than httpx: httpx costs several
    times the server's CPU per request, and on a small machine the client would set the
    pace (bench/README.md)."""
    result = Latencies(name, duration)
    stop = time.monotonic() + duration

    async def poller(index: int) -> None:
        rng = random.Random(index)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await asyncio.sleep(rng.random() * interval)  # spread the clients out
            next_at = time.monotonic()
            while next_at < stop:
                path = rng.choice(paths)
                started = time.perf_counter()
                writer.write(f"GET {path} HTTP/1.1\r\nHost: tunery\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                status = int(head.split(b" ", 2)[1])
                if status == 200:
                    result.samples.append(time.perf_counter() - started)
                else:
                    result.errors.append(f"{path}: {status} {body[:200]!r}")
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(poller(i) for i in range(clients)))
    return result


def listed_jobs(base_url: str) -> dict[str, str]:
    found: dict[str, str] = {}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = client.get("/v1/fine_tuning/jobs", params=params).json()
            for job in page["data"]:
                found[job["id"]] = job["status"]
            if not page["has_more"]:
                return found
            after = page["data"][-1]["id"]


# -- the big upload --------------------------------------------------------------------------


def multipart(size: int) -> tuple[Iterator[bytes], int, int]:
    """A multipart body carrying a JSONL file of about `size` bytes, made while it is sent;
    returns (chunks, content length, rows)."""
    head = (
        b'--tunery\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--tunery\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    tail = b"\r\n--tunery--\r\n"
    row = (json.dumps({"text": "lorem ipsum " * 800, "label": "a"}) + "\n").encode()
    rows_per_chunk = max(1, (1 << 20) // len(row))
    chunk = row * rows_per_chunk
    chunks = max(1, size // len(chunk))

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(chunks):
            yield chunk
        yield tail

    return body(), len(head) + chunks * len(chunk) + len(tail), chunks * rows_per_chunk


@dataclass
class UploadMemory:
    size: int
    seconds: float
    before: int
    peak: int
    after: int

    @property
    def growth(self) -> int:
        return self.peak - self.before


def upload_and_sample(api: Api, size: int) -> UploadMemory:
    body, length, rows = multipart(size)
    before = api.rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            with suppress(OSError, BenchError):
                peak = max(peak, api.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        response = httpx.post(
            f"{api.base_url}/v1/files",
            content=body,
            headers={
                "Content-Type": "multipart/form-data; boundary=tunery",
                "Content-Length": str(length),
            },
            timeout=900,
        )
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - started
    if response.status_code != 200:
        raise BenchError(f"upload of {length} bytes failed: {response.status_code} {response.text}")
    file = response.json()
    if file["status"] != "processed" or file["stats"]["rows"] != rows:
        raise BenchError(f"upload not processed whole: {file}")
    return UploadMemory(length, seconds, before, max(peak, api.rss_bytes()), api.rss_bytes())


# -- main ------------------------------------------------------------------------------------


def report_latency(result: Latencies, baseline: Latencies) -> None:
    print(
        f"  {result.name:<14} {len(result.samples):>6} requests  {result.rate:7.1f}/s  "
        f"p50 {result.pct(50):6.2f} ms  p95 {result.pct(95):6.2f} ms  "
        f"p99 {result.pct(99):6.2f} ms  max {max(result.samples) * 1000:7.2f} ms  "
        f"errors {len(result.errors)}  server CPU "
        f"{result.server_cpu / max(len(result.samples), 1) * 1000:.2f} ms/request, "
        f"busy {result.server_cpu / result.seconds * 100:.0f}%"
    )
    if result is not baseline:
        print(
            "  ratio to baseline (status / healthz): "
            f"p50 {result.pct(50) / baseline.pct(50):.2f}x  "
            f"p99 {result.pct(99) / baseline.pct(99):.2f}x"
        )


def run(args: argparse.Namespace) -> int:
    from tests.support.models import build_tiny_bert

    database_server = None if args.sqlite else args.database_url
    if database_server is None and not args.sqlite and postgres_answers(PG_DEFAULT):
        database_server = PG_DEFAULT
    failed = False
    with tempfile.TemporaryDirectory(prefix="tunery-load-") as tmp:
        folder = Path(tmp)
        build_tiny_bert(folder / "models" / "tiny-bert")
        with throwaway_database(database_server, folder) as database_url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
            env.update(
                TUNERY_DATA_DIR=str(folder / "data"),
                TUNERY_MODELS_DIR=str(folder / "models"),
                TUNERY_DATABASE_URL=database_url,
                TUNERY_QUEUE=f"tunery-load-{secrets.token_hex(4)}",
                TUNERY_MAX_UPLOAD_BYTES=str(max(args.upload_mb * MB * 2, 1 << 30)),
                # a load test of one client machine, not of the per-project limits
                TUNERY_QUOTA_CONCURRENT_JOBS=str(args.jobs + 10),
                TUNERY_RATE_LIMIT_PER_MINUTE="0",
                HF_HUB_OFFLINE="1",
            )
            if args.broker_url:
                env["TUNERY_BROKER_URL"] = args.broker_url
            with api_server(env, folder) as api:
                print(f"tunery api on {database_url.split('@')[-1].split('?')[0]}")
                print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")

                started = time.monotonic()
                ids = asyncio.run(create_jobs(api.base_url, args.jobs))
                took = time.monotonic() - started
                print(f"\ncreated {len(ids)} jobs in {took:.1f} s ({len(ids) / took:.0f}/s)")

                print(
                    f"\n{args.clients} clients, one GET each every {args.interval} s, "
                    f"for {args.duration} s:"
                )

                def load(paths: list[str], seconds: float, name: str) -> Latencies:
                    cpu = api.cpu_seconds()
                    result = asyncio.run(
                        poll(api.port, paths, args.clients, args.interval, seconds, name)
                    )
                    result.server_cpu = api.cpu_seconds() - cpu
                    return result

                paths = [f"/v1/fine_tuning/jobs/{job_id}" for job_id in ids]
                load(["/healthz", *paths], 5, "warm-up")  # connections, pools, caches
                baseline = load(["/healthz"], args.duration, "healthz")
                status = load(paths, args.duration, "job status")
                report_latency(baseline, baseline)
                report_latency(status, baseline)
                p99 = status.pct(99)
                met = p99 < P99_GOAL_MS and not status.errors
                print(
                    f"  goal: p99 < {P99_GOAL_MS:.0f} ms, no errors: {'met' if met else 'MISSED'}"
                )
                if status.errors or baseline.errors:
                    failed = True
                    print(f"  first errors: {(status.errors or baseline.errors)[:3]}")

                jobs = listed_jobs(api.base_url)
                lost = set(ids) - set(jobs)
                waiting = (None, "validating_files", "queued")  # no worker claimed them
                moved = {job_id for job_id in ids if jobs.get(job_id) not in waiting}
                print(
                    f"\nnothing lost: {len(ids)} created, {len(set(ids) & set(jobs))} listed, "
                    f"{len(lost)} missing, {len(moved)} no longer waiting for a worker"
                )
                if lost or moved:
                    failed = True

                if args.upload_mb > 0:
                    small = upload_and_sample(api, 10 * MB)
                    big = upload_and_sample(api, args.upload_mb * MB)
                    print("\nupload streamed from a generator; API resident memory (RSS):")
                    for name, run_ in (("baseline", small), ("upload", big)):
                        print(
                            f"  {name:<9} {run_.size / MB:8.1f} MB in {run_.seconds:6.1f} s "
                            f"({run_.size / MB / run_.seconds:6.1f} MB/s)  RSS before "
                            f"{run_.before / MB:6.1f} MB  peak {run_.peak / MB:6.1f} MB  "
                            f"growth {run_.growth / MB:6.1f} MB"
                        )
                    print(
                        f"  growth per MB uploaded: {big.growth / big.size * 1000:.2f} KB/MB; "
                        f"growth ratio upload/baseline: "
                        f"{big.growth / max(small.growth, 1):.2f}x for "
                        f"{big.size / small.size:.0f}x the bytes"
                    )
                    met = big.growth < RSS_GOAL_MB * MB
                    print(
                        f"  goal: RSS growth < {RSS_GOAL_MB:.0f} MB: {'met' if met else 'MISSED'}"
                    )
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between a client's GETs"
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--upload-mb", type=int, default=1000, help="0 skips the upload")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"a Postgres server (default {PG_DEFAULT} when it answers, else SQLite)",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite even if Postgres answers")
    parser.add_argument("--broker-url", default=None, help="default: the filesystem broker")
    args = parser.parse_args()
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
