"""A sweep over HTTP against live servers, with real trainers on tiny-bert: its trials run as
jobs on the workers, the worker is SIGKILLed in the middle of a trial (its job resumes and
the trial with it: none is left running), the median pruner stops a trial that learns
nothing (its eval_loss stays behind the others' at its first evaluation), and the best
trial's model deploys and predicts.

Runs embedded (`tunery serve`, which restarts its worker when it dies) and, where they are
reachable, as separate processes on Postgres + Redis (the test starts a second worker).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_training_faults import trainer_pids, worker_pid
from tests.support import backends, live
from tests.support.data import sentiment_rows, write_jsonl
from tests.support.faults import FAST, job_body, upload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LR = "method.supervised.hyperparameters.learning_rate"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def server(
    backend: backends.Backend, tmp_path: Path, tiny_models: Path
) -> Iterator[live.LiveServer]:
    # the trainers wait for each verdict as long as it takes (the default bound is 10 s): how
    # far a pruned trial trains does not depend on how loaded the machine is
    env = FAST | {"TUNERY_SWEEP_EVERY_SECONDS": "0.5", "TUNERY_SWEEP_VERDICT_SECONDS": "300"}
    with live.for_backend(backend, tmp_path / "data", tiny_models, **env) as srv:
        yield srv


def sweep_body(file_id: str) -> dict[str, Any]:
    # MiniLM learns this data (tiny-bert's random weights do not, so nothing would be ahead
    # of anything); 180 training rows in batches of 8: 23 steps an epoch, a checkpoint every
    # 4 steps, an evaluation (which the trainer waits to have judged) every 8
    job = job_body(file_id, epochs=2, eval_steps=8, checkpoint_steps=4)
    job["model"] = MINILM
    job["training_type"] = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}
    job["method"]["supervised"]["hyperparameters"]["max_seq_length"] = 32
    del job["method"]["supervised"]["hyperparameters"]["learning_rate"]
    return {
        "job": job,
        # two rates that learn, then one that cannot: the grid's order follows the seed
        "search_space": {LR: {"type": "choice", "values": [2e-3, 1e-3, 1e-9]}},
        "objective": {"metric": "eval_loss"},
        "n_trials": 3,
        "max_parallel": 1,
        "sampler": "grid",
        "pruner": "median",
        # the grid's order for this seed: 1e-3, 2e-3, then 1e-9
        "seed": 3,
    }


def wait_sweep(
    client: httpx.Client, sweep_id: str, ready: Any, server: live.LiveServer, timeout: float = 420
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    sweep: dict[str, Any] = {}
    while time.monotonic() < deadline:
        sweep = client.get(f"/v1/fine_tuning/sweeps/{sweep_id}").json()
        if ready(sweep):
            return sweep
        time.sleep(0.5)
    raise AssertionError(f"{sweep_id} never got there: {sweep}\n{server.log_tail()}")


def test_a_sweep_survives_a_killed_worker_prunes_and_deploys_its_best(
    server: live.LiveServer, tmp_path: Path
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(200, seed=5))
    with server.client() as client:
        file_id = upload(client, train)
        created = client.post("/v1/fine_tuning/sweeps", json=sweep_body(file_id))
        assert created.status_code == 200, created.text
        sweep_id = created.json()["id"]
        (first,) = created.json()["trials"]
        job_id = first["job_id"]

        def checkpointed(_: dict[str, Any]) -> bool:
            listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
            return bool(listed["data"])

        wait_sweep(client, sweep_id, checkpointed, server)
        os.kill(worker_pid(server), signal.SIGKILL)
        if "worker" in server.procs:  # distributed: another worker takes over
            server.start("worker-2", ["worker", "--loglevel", "INFO"])

        done = wait_sweep(client, sweep_id, lambda s: s["status"] != "running", server)
        assert done["status"] == "succeeded", done
        states = {t["number"]: t["state"] for t in done["trials"]}
        assert "running" not in states.values()
        assert len(done["trials"]) == 3
        resumed = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert resumed["attempt"] == 2 and resumed["status"] == "succeeded"
        assert states[first["number"]] == "complete"

        # the rate that cannot learn is pruned at one of its first evaluations, and its job
        # stops there (cancelled, no trainer left): its trainer waited for the verdict
        (hopeless,) = [t for t in done["trials"] if t["params"][LR] == 1e-9]
        assert hopeless["state"] == "pruned", done
        pruned_at = hopeless["intermediate_values"][-1][0]
        assert pruned_at < 46 and hopeless["steps"] == pruned_at, hopeless
        # the sweep ends once the pruned trial's job has stopped
        stopped = client.get(f"/v1/fine_tuning/jobs/{hopeless['job_id']}").json()
        assert stopped["status"] == "cancelled", stopped
        assert stopped["progress"]["step"] == pruned_at
        assert not trainer_pids(hopeless["job_id"])
        complete = [t for t in done["trials"] if t["state"] == "complete"]
        assert done["total_steps"] < 3 * 46
        best = min(complete, key=lambda t: t["value"])
        assert done["best_trial"] == best["number"]

        model = done["best_fine_tuned_model"]
        assert (
            model == client.get(f"/v1/fine_tuning/jobs/{best['job_id']}").json()["fine_tuned_model"]
        )
        response = client.post("/v1/deployments", json={"model": model})
        assert response.status_code == 200, response.text
        deployment = live.wait_for(
            client, f"/v1/deployments/{response.json()['id']}", {"ready", "failed"}
        )
        assert deployment["status"] == "ready", deployment
        predicted = client.post(
            f"/v1/deployments/{deployment['id']}/predict",
            json={"inputs": ["the film was wonderful and great", "it was awful and boring"]},
        )
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["predictions"]) == 2
