"""The Tunery stacks bench/serving.py drives: `tunery serve` on SQLite, or `tunery api`,
`tunery worker` and `tunery inference` on a throw-away Postgres database and Redis; and a
fine-tuned classifier registered in them as a finished job leaves it, then deployed."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import PG_DEFAULT, throwaway_database  # noqa: E402
from bench.predict import MINILM, BenchError, free_port  # noqa: E402


@dataclass
class Stack:
    name: str
    api: str
    inference: str
    database_url: str
    data_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        """The API's and the inference server's process ids (serve's children included)."""
        found = {}
        for proc in self.procs:
            found[proc.args[3]] = proc.pid  # type: ignore[index]
            for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                if b"inference" in cmdline:
                    found["inference"] = int(child)
        found["api"] = found.pop("serve", found.get("api", 0))
        return {name: found[name] for name in ("api", "inference")}

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(self.data_dir.glob("*.log"))
        )


def _env(data_dir: Path, models: Path, queue_limit: int, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    env.update(
        TUNERY_DATA_DIR=str(data_dir),
        TUNERY_MODELS_DIR=str(models),
        TUNERY_SERVING_MAX_CONCURRENCY=str(queue_limit),
        TUNERY_RATE_LIMIT_PER_MINUTE="0",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        # ROOT first; what was on the path stays (a device's carried packages, say)
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env | extra


def _spawn(stack: Stack, name: str, args: list[str], env: dict[str, str]) -> None:
    with (stack.data_dir / f"{name}.log").open("ab") as out:
        stack.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )


def _wait_up(stack: Stack, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in stack.procs):
            raise BenchError(f"{stack.name}: a server exited\n{stack.log_tail()}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise BenchError(f"{stack.name}: {url} not up after {timeout}s\n{stack.log_tail()}")


@contextmanager
def stack(
    backend: str,
    scratch: Path,
    models: Path,
    args: argparse.Namespace,
    queue_limit: int,
    extra: dict[str, str],
) -> Iterator[Stack]:
    data_dir = scratch / backend
    data_dir.mkdir()
    api_port, inference_port = free_port(), free_port()
    server = None if backend == "sqlite" else (args.database_url or PG_DEFAULT)
    with throwaway_database(server, data_dir) as database_url:
        running = Stack(
            backend,
            f"http://127.0.0.1:{api_port}",
            f"http://127.0.0.1:{inference_port}",
            database_url,
            data_dir,
        )
        env = _env(data_dir, models, queue_limit, extra)
        try:
            if backend == "sqlite":
                serve = ["serve", "--port", str(api_port), "--inference-port", str(inference_port)]
                _spawn(running, "serve", serve, env)
            else:
                env |= {
                    "TUNERY_DATABASE_URL": database_url,
                    "TUNERY_BROKER_URL": args.broker_url,
                    "TUNERY_QUEUE": f"tunery-bench-{secrets.token_hex(4)}",
                    "TUNERY_INFERENCE_URL": running.inference,
                }
                subprocess.run(
                    [sys.executable, "-m", "app.cli", "db", "upgrade"],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                )
                _spawn(running, "api", ["api", "--port", str(api_port)], env)
                _spawn(running, "inference", ["inference", "--port", str(inference_port)], env)
                _spawn(running, "worker", ["worker", "--loglevel", "WARNING"], env)
            _wait_up(running, running.api)
            _wait_up(running, running.inference)
            yield running
        finally:
            for proc in running.procs:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in running.procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)


def register_classifier(running: Stack, minilm: Path, adapter: Path) -> tuple[str, dict[str, Any]]:
    """A fine-tuned model as a finished job leaves it (rows and artifact); its spec."""
    from sqlalchemy.orm import Session

    from app.db import make_engine
    from app.tables import FineTunedModelRow, JobRow

    job_id = "ftjob-bench"
    key = f"models/{job_id}/model"
    shutil.copytree(adapter, running.data_dir / "artifacts" / key)
    name = f"ft:{MINILM}:bench:{job_id}"
    engine = make_engine(running.database_url)
    with Session(engine) as session:
        session.add(
            JobRow(
                id=job_id,
                model=MINILM,
                task="classification",
                status="succeeded",
                training_file="file-none",
                seed=1,
                fine_tuned_model=name,
            )
        )
        session.flush()
        session.add(
            FineTunedModelRow(
                id=name,
                job_id=job_id,
                base_model=MINILM,
                task="classification",
                training_type="lora",
                format="adapter",
                artifact_key=key,
            )
        )
        session.commit()
    engine.dispose()
    spec = {"key": name, "task": "classification", "base_model_dir": str(minilm), "artifact": key}
    return name, spec


def deploy(running: Stack, model: str) -> str:
    with httpx.Client(base_url=running.api, timeout=120) as client:
        response = client.post("/v1/deployments", json={"model": model})
        if response.status_code != 200:
            raise BenchError(f"deploy failed: {response.status_code} {response.text}")
        dep_id = str(response.json()["id"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = client.get(f"/v1/deployments/{dep_id}").json()
            if body["status"] == "ready":
                return dep_id
            if body["status"] == "failed":
                raise BenchError(f"deployment failed: {body}")
            time.sleep(0.2)
    raise BenchError("deployment still loading after 120 s")
