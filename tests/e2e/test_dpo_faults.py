"""A DPO job survives a worker killed with SIGKILL mid-training: the next attempt computes
the reference log-probabilities again from the same starting weights, resumes from the last
stored checkpoint, and ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.test_training_faults import (
    messages,
    server,  # noqa: F401 - the fixture
    trainer_pids,
    wait_until,
    worker_pid,
)
from tests.support import live
from tests.support.data import write_jsonl
from tests.support.faults import stop_at_first_checkpoint, upload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB = {
    "model": "tiny-llama",
    "seed": 5,
    "training_type": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
    "method": {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "beta": 0.1,
                "n_epochs": 2,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "max_seq_length": 32,
                "checkpoint_steps": 5,
            }
        },
    },
}


def preference_rows(n: int) -> list[dict[str, str]]:
    return [
        {"prompt": f"what is {i % 10} ? answer:", "chosen": f" {i % 10}", "rejected": " x"}
        for i in range(n)
    ]


@pytest.mark.faults
def test_a_killed_dpo_job_resumes_and_matches(
    server: live.LiveServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    train = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(120))
    with server.client() as client:
        file_id = upload(client, train)

        def create() -> str:
            response = client.post("/v1/fine_tuning/jobs", json={**JOB, "training_file": file_id})
            assert response.status_code == 200, response.text
            return str(response.json()["id"])

        killed = create()
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
        if "worker" in server.procs:
            server.start("worker-2", ["worker", "--loglevel", "INFO"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and trainer_pids(killed, attempt=1):
            time.sleep(0.2)
        done = wait_until(client, killed, lambda job: job["status"] == "succeeded", server)
        assert done["attempt"] == 2
        assert any(m.startswith("Resuming from checkpoint step-") for m in messages(client, killed))

        reference = create()
        wait_until(client, reference, lambda job: job["status"] == "succeeded", server)
        metrics = client.get(f"/v1/fine_tuning/jobs/{killed}/metrics").json()
        expected = client.get(f"/v1/fine_tuning/jobs/{reference}/metrics").json()
        for name in ("eval_loss", "reward_margin", "reward_accuracy"):
            assert metrics["final"][name] == pytest.approx(expected["final"][name], abs=1e-4)
        assert [m["step"] for m in metrics["training"]] == [m["step"] for m in expected["training"]]
