"""Model folders are data, never code: weights load from safetensors only and
`trust_remote_code` is never on. A base model folder in TUNERY_MODELS_DIR that carries a
pickle checkpoint, or custom code (an `auto_map` and modeling_*.py), is refused with a
message by the trainer, the worker that runs jobs and the inference server, and listing it
runs nothing. Each poisoned folder holds a tripwire that creates a marker file when its
code runs; the tests prove that it fires when loaded unsafely, and never fires here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import live
from tests.support.data import qa_rows, write_jsonl
from tests.support.faults import wait_inference_up
from tests.support.models import build_custom_code_model, build_pickled_model

pytestmark = pytest.mark.faults

POISONED = {
    # weights only as pytorch_model.bin, a pickle holding a tripwire
    "binary-llama": "pickle",
    # a built-in architecture (llama) with an auto_map and modeling code riding along
    "llama-plus": "code",
    # an architecture only its custom code knows
    "strange-arch": "code",
}


@dataclass(frozen=True)
class Poisoned:
    models_dir: Path
    markers: Path

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())


def build_poisoned(root: Path, tiny_models: Path) -> Poisoned:
    models, markers = root / "models", root / "markers"
    markers.mkdir(parents=True)
    models.mkdir()
    shutil.copytree(tiny_models / "tiny-llama", models / "tiny-llama")
    llama = models / "tiny-llama"
    build_pickled_model(llama, models / "binary-llama", markers / "binary-llama")
    build_custom_code_model(llama, models / "llama-plus", markers / "llama-plus")
    build_custom_code_model(
        llama, models / "strange-arch", markers / "strange-arch", model_type="evil"
    )
    return Poisoned(models, markers)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Poisoned:
    return build_poisoned(tmp_path_factory.mktemp("poisoned"), tiny_models)


def test_the_tripwires_fire_when_loaded_unsafely(tmp_path: Path, tiny_models: Path) -> None:
    """The proof the other tests lean on: each tripwire does fire when its folder is loaded
    the unsafe way (an unrestricted unpickle; trust_remote_code=True)."""
    armed = build_poisoned(tmp_path, tiny_models)
    unpickle = (
        "import torch, sys; torch.load(sys.argv[1], weights_only=False)",
        str(armed.models_dir / "binary-llama" / "pytorch_model.bin"),
    )
    remote_code = (
        "import sys; from transformers import AutoConfig; "
        "AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)",
        str(armed.models_dir / "strange-arch"),
    )
    for code, argument in (unpickle, remote_code):
        subprocess.run([sys.executable, "-c", code, argument], check=True, capture_output=True)
    assert armed.fired() == ["binary-llama", "strange-arch"]


@pytest.mark.parametrize("name", sorted(POISONED))
def test_the_trainer_refuses_and_runs_nothing(
    poisoned: Poisoned, tmp_path: Path, name: str
) -> None:
    from app.failures import Failure
    from worker.training.run import train

    rows = write_jsonl(tmp_path / "qa.jsonl", qa_rows(16))
    spec = {
        "job_id": "ftjob-poisoned",
        "task": "causal-lm",
        "base_model_dir": str(poisoned.models_dir / name),
        "train_file": {"path": str(rows), "filename": "qa.jsonl"},
        "validation_file": None,
        "output_dir": str(tmp_path / "out"),
        "events_path": str(tmp_path / "out" / "events.jsonl"),
        "seed": 1,
        "hyperparameters": {"n_epochs": 1, "batch_size": 8, "max_seq_length": 32},
        "training_type": {"type": "full"},
    }
    (tmp_path / "out").mkdir()
    events: list[dict[str, Any]] = []
    with pytest.raises(Failure) as failure:
        train(spec, events.append)
    assert failure.value.code == "invalid_base_model"
    assert POISONED[name] in str(failure.value), str(failure.value)
    assert events[-1]["type"] == "failed"
    assert poisoned.fired() == []


@pytest.fixture(scope="module")
def server(
    poisoned: Poisoned, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[live.LiveServer]:
    data = tmp_path_factory.mktemp("safety") / "data"
    with live.embedded(data, poisoned.models_dir) as srv:
        yield srv


def poll(client: httpx.Client, path: str, done: set[str], timeout: float = 60) -> dict[str, Any]:
    return live.wait_for(client, path, done, timeout=timeout)


def test_listing_jobs_and_deployments_refuse_poisoned_models(
    server: live.LiveServer, poisoned: Poisoned, tmp_path: Path
) -> None:
    rows = write_jsonl(tmp_path / "qa.jsonl", qa_rows(16))
    with server.client() as client:
        wait_inference_up(client)
        listed = client.get("/v1/models")
        assert listed.status_code == 200, listed.text
        for name in POISONED:
            assert client.get(f"/v1/models/{name}").status_code in (200, 404)
        with rows.open("rb") as fh:
            upload = client.post("/v1/files", files={"file": ("qa.jsonl", fh)})
        assert upload.status_code == 200, upload.text
        file_id = upload.json()["id"]

        jobs: dict[str, str] = {}
        deployments: dict[str, str] = {}
        for name in POISONED:
            body = {"model": name, "training_file": file_id, "training_type": {"type": "full"}}
            job: Any = client.post("/v1/fine_tuning/jobs", json=body)
            dep: Any = client.post("/v1/deployments", json={"model": name})
            # refused at once (400/404) or accepted and failed when loaded
            for kind, response, store in (("job", job, jobs), ("deployment", dep, deployments)):
                if response.status_code == 200:
                    store[name] = response.json()["id"]
                else:
                    assert response.status_code in (400, 404), (kind, name, response.text)
                    assert response.json()["error"]["param"] == "model"
            predict = client.post("/v1/predict", json={"model": name, "inputs": ["hello"]})
            assert predict.status_code in (400, 404), predict.text
            assert POISONED[name] in predict.json()["error"]["message"] or (
                predict.status_code == 404
            ), predict.text

        for name, job_id in jobs.items():
            job = poll(client, f"/v1/fine_tuning/jobs/{job_id}", {"succeeded", "failed"})
            assert job["status"] == "failed", (name, job)
            assert job["error"]["code"] == "invalid_base_model", job["error"]
            assert job["error"]["param"] == "model"
            assert POISONED[name] in job["error"]["message"], job["error"]
        for name, dep_id in deployments.items():
            dep = poll(client, f"/v1/deployments/{dep_id}", {"ready", "failed"})
            assert dep["status"] == "failed", (name, dep)
            assert POISONED[name] in json.dumps(dep["error"]), dep["error"]
    assert poisoned.fired() == []
