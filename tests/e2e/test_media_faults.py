"""An image job survives a SIGKILL of its worker: requeued when its lease expires, resumed
from the last stored checkpoint, and its final metrics match an uninterrupted run with the
same seed, augmentation on (its random crops and flips come from torch's RNG, which the
checkpoint carries). Embedded, and on Postgres + Redis where reachable."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_training_faults import (
    trainer_pids,
    wait_until,
    worker_pid,
)
from tests.support import backends, live
from tests.support.faults import FAST, stop_at_first_checkpoint, upload
from tests.support.media import digit_images, folder_zip
from tests.support.models import build_tiny_vit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB = {
    "model": "tiny-vit",
    "seed": 11,
    "training_type": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
    "method": {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": 2,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "checkpoint_steps": 5,
                "validation_split": 0.1,
            }
        },
    },
}


@pytest.fixture(scope="module")
def vit_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vit-models")
    build_tiny_vit(root / "tiny-vit")
    return root


@pytest.fixture
def server(
    backend: backends.Backend, tmp_path: Path, vit_models: Path
) -> Iterator[live.LiveServer]:
    # nothing here serves a model: the distributed stack runs without its inference server
    with live.for_backend(
        backend, tmp_path / "data", vit_models, live.WITHOUT_INFERENCE, **FAST
    ) as srv:
        yield srv


def every_message(client: httpx.Client, job_id: str) -> list[str]:
    """All the job's event messages, oldest first, across pages (a long job has many)."""
    found: list[str] = []
    params: dict[str, str | int] = {"limit": 100}
    while True:
        page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
        found += [event["message"] for event in page["data"]]
        if not page.get("has_more") or not page["data"]:
            return list(reversed(found))
        params["after"] = page["data"][-1]["id"]


def create(client: httpx.Client, file_id: str) -> str:
    response = client.post("/v1/fine_tuning/jobs", json={**JOB, "training_file": file_id})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


@pytest.mark.faults  # docs/reliability.md
def test_a_killed_image_job_resumes_and_matches_an_uninterrupted_one(
    server: live.LiveServer, tmp_path: Path
) -> None:
    # 3 x 40 pictures, 108 to train on in batches of 4: 27 steps an epoch, 54 in all
    archive = folder_zip(tmp_path / "digits.zip", digit_images(40, range(3)))
    with server.client() as client:
        file_id = upload(client, archive)
        killed = create(client, file_id)
        # the trainer is held stopped from the moment its first checkpoint is listed, so the
        # kill lands mid-training however fast the machine is
        stopped = stop_at_first_checkpoint(
            client, killed, lambda: trainer_pids(killed, attempt=1), server
        )
        running = client.get(f"/v1/fine_tuning/jobs/{killed}").json()
        assert running["progress"]["step"] < running["progress"]["total_steps"]
        os.kill(worker_pid(server), signal.SIGKILL)
        for pid in stopped:  # its parent-death SIGKILL is pending; let nothing else be
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if "worker" in server.procs:  # distributed: another worker takes over
            server.start("worker-2", ["worker", "--loglevel", "INFO"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and trainer_pids(killed, attempt=1):
            time.sleep(0.2)
        assert not trainer_pids(killed, attempt=1)
        done = wait_until(client, killed, lambda job: job["status"] == "succeeded", server)
        assert done["attempt"] == 2
        lines = every_message(client, killed)
        assert sum(m.startswith("Resuming from checkpoint step-") for m in lines) == 1, lines

        reference = create(client, file_id)
        baseline = wait_until(client, reference, lambda job: job["status"] == "succeeded", server)
        assert done["best_step"] == baseline["best_step"]
        metrics = client.get(f"/v1/fine_tuning/jobs/{killed}/metrics").json()
        expected = client.get(f"/v1/fine_tuning/jobs/{reference}/metrics").json()
        assert metrics["final"]["eval_loss"] == pytest.approx(
            expected["final"]["eval_loss"], abs=1e-4
        )
        assert metrics["final"]["accuracy"] == pytest.approx(expected["final"]["accuracy"])
        losses = [m["train_loss"] for m in metrics["training"]]
        assert losses == pytest.approx([m["train_loss"] for m in expected["training"]], abs=1e-4)
