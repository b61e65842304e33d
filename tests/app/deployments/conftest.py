"""The API in-process on a real database, talking to a real inference server process.

`tuned` registers fine-tuned models the way a finished job leaves them (a job row, a model
row, an artifact in the store) without training, so these tests stay fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.ids import new_id
from app.main import create_app
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import FineTunedModelRow, JobRow
from tests.support.live import free_port
from tests.worker.inference.artifacts import build_causal_adapter, build_classification_adapter


@dataclass
class InferenceProcess:
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "inference", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"inference server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError(f"inference server not up: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def models(self) -> dict:
        return httpx.get(f"{self.url}/internal/models", timeout=10).json()


@dataclass
class Serving:
    client: TestClient
    settings: Settings
    store: ArtifactStore
    inference: InferenceProcess
    tuned: Callable[..., str]
    # evaluation ids the API enqueued
    evaluations: list[str]


@pytest.fixture(scope="session")
def inference_process(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> Iterator[InferenceProcess]:
    """One inference server per pytest process for the modules here (starting one loads
    torch: seconds of CPU); tests that kill it start it again, and `serving` restarts it if
    one did not. Each test deploys models of its own (fresh ids), so what an earlier test
    left loaded is not what a later one looks up."""
    data_dir = tmp_path_factory.mktemp("serving-data")
    inference = InferenceProcess(
        free_port(),
        {
            **{k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")},
            "TUNERY_DATA_DIR": str(data_dir),
            "TUNERY_MODELS_DIR": str(tiny_models),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        },
        data_dir / "inference.log",
    )
    inference.start()
    try:
        yield inference
    finally:
        inference.kill()


@pytest.fixture
def serving(
    migrated_database_url: str, tiny_models: Path, inference_process: InferenceProcess
) -> Iterator[Serving]:
    inference = inference_process
    if inference.proc is None or inference.proc.poll() is not None:
        inference.start()
    settings = Settings(
        data_dir=Path(inference.env["TUNERY_DATA_DIR"]),
        database_url=migrated_database_url,
        models_dir=tiny_models,
        inference_url=inference.url,
    )
    store = ArtifactStore(settings.storage_url, settings.cache_dir)
    app = create_app(settings, reconciler=False)
    app.state.enqueue = lambda job_id: None
    evaluations: list[str] = []
    app.state.enqueue_evaluation = evaluations.append
    with TestClient(app) as client:
        sessionmaker = app.state.sessionmaker

        def tuned(task: str = "classification", labels: list[str] | None = None) -> str:
            return register_tuned(sessionmaker, store, tiny_models, task, labels)

        yield Serving(client, settings, store, inference, tuned, evaluations)


def register_tuned(
    sessionmaker: Any,
    store: ArtifactStore,
    models_dir: Path,
    task: str = "classification",
    labels: list[str] | None = None,
) -> str:
    """A fine-tuned LoRA model of tiny-bert (classification) or tiny-llama, registered as a
    finished job leaves it: job row, model row, artifact in the store. Returns its name."""
    job_id = new_id("ftjob")
    key = f"models/{job_id}/model"
    base = "tiny-bert" if task == "classification" else "tiny-llama"
    if task == "classification":
        build_classification_adapter(
            models_dir / base, store.local_dir(key), labels=labels or ["neg", "pos"]
        )
    else:
        build_causal_adapter(models_dir / base, store.local_dir(key))
    name = f"ft:{base}::{job_id}"
    with sessionmaker() as session:
        session.add(
            JobRow(
                id=job_id,
                model=base,
                task=task,
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
                base_model=base,
                task=task,
                training_type="lora",
                format="adapter",
                artifact_key=key,
            )
        )
        session.commit()
    return name


def deploy(serving: Serving, model: str, timeout: float = 60) -> dict:
    response = serving.client.post("/v1/deployments", json={"model": model})
    assert response.status_code == 200, response.text
    dep_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = serving.client.get(f"/v1/deployments/{dep_id}").json()
        if body["status"] != "loading":
            return dict(body)
        time.sleep(0.1)
    raise TimeoutError(f"deployment {dep_id} still loading")
