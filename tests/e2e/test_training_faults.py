"""Training that survives production, over HTTP against live servers:

- a worker killed with SIGKILL mid-job: the job is requeued when its lease expires, the
  next worker resumes it from the last stored checkpoint, it succeeds once, and its final
  metrics match an uninterrupted run with the same seed;
- pause -> paused -> resume -> running, then cancel: the trainer's processes are gone within
  seconds and the checkpoints stay listed and downloadable.

Runs embedded (`tunery serve`, which restarts its worker when it dies) and, where they are
reachable, as separate processes on Postgres + Redis (the test starts a second worker).
"""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import backends, live
from tests.support.data import sentiment_rows, write_jsonl
from tests.support.faults import FAST, upload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB = {
    "model": "tiny-bert",
    "seed": 11,
    "training_type": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
    "method": {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": 5,
                "batch_size": 8,
                "learning_rate": 5e-3,
                "max_seq_length": 16,
                "checkpoint_steps": 10,
            }
        },
    },
}


@pytest.fixture(scope="module")
def server(
    module_backend: backends.Backend,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: Path,
) -> Iterator[live.LiveServer]:
    """One live server per backend for the module's tests (each uploads and trains its own
    jobs; after a killed worker, `tunery serve` starts another and the distributed test
    starts worker-2, so the next test finds a worker either way). Nothing here serves a
    model: the distributed stack runs without its inference server."""
    data_dir = tmp_path_factory.mktemp(f"faults-{module_backend.name}") / "data"
    with live.for_backend(
        module_backend, data_dir, tiny_models, live.WITHOUT_INFERENCE, **FAST
    ) as srv:
        yield srv


def processes() -> Iterator[tuple[int, int, list[bytes]]]:
    """(pid, parent pid, command line) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        yield int(entry.name), parent, command


def trainer_pids(job_id: str, attempt: int | None = None) -> list[int]:
    """The job's trainer processes (their spec path names the job and the attempt)."""
    marker = f"{job_id}/attempt-{attempt}/" if attempt else job_id
    return [
        pid
        for pid, _, command in processes()
        if b"worker.training.run" in command and any(marker.encode() in part for part in command)
    ]


def worker_pid(server: live.LiveServer) -> int:
    """The Celery worker: `tunery worker` itself, or the child `tunery serve` started."""
    if "worker" in server.procs:
        return server.procs["worker"].pid
    serve = server.procs["serve"].pid
    (pid,) = [
        pid
        for pid, parent, command in processes()
        # `python -m worker celery`, retitled by Celery ("[celeryd: ...]") where setproctitle is
        # installed
        if parent == serve and any(b"celery" in part for part in command)
    ]
    return pid


def create(client: httpx.Client, file_id: str) -> str:
    response = client.post("/v1/fine_tuning/jobs", json={**JOB, "training_file": file_id})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_until(
    client: httpx.Client, job_id: str, ready: Any, server: live.LiveServer, timeout: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if ready(job):
            return job
        if job["status"] in ("failed", "cancelled"):
            break
        time.sleep(0.3)
    raise AssertionError(f"{job_id} never got there: {job}\n{server.log_tail()}")


def checkpoints(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 100})
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["data"]))


def messages(client: httpx.Client, job_id: str) -> list[str]:
    """Every event's message, oldest first (a page holds 100; a 225-step job logs more)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
        events += page["data"]
        if not page["has_more"]:
            return [event["message"] for event in reversed(events)]
        params["after"] = page["data"][-1]["id"]


@pytest.mark.faults  # docs/reliability.md
def test_a_killed_worker_is_resumed_from_its_last_checkpoint(
    server: live.LiveServer, tmp_path: Path
) -> None:
    # 360 training rows in batches of 8: 45 steps an epoch, 225 in all. The first checkpoint
    # (step 10) is listed by step ~120 on an idle box: 3 epochs left too little room under load
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(400, seed=3))
    with server.client() as client:
        file_id = upload(client, train)
        killed = create(client, file_id)
        running = wait_until(client, killed, lambda job: bool(checkpoints(client, killed)), server)
        assert running["status"] == "running" and running["attempt"] == 1
        total = running["progress"]["total_steps"]
        assert running["progress"]["step"] < total, "the job finished before the kill"
        os.kill(worker_pid(server), signal.SIGKILL)
        if "worker" in server.procs:  # distributed: another worker takes over
            server.start("worker-2", ["worker", "--loglevel", "INFO"])
        # the dead worker's trainer dies with it (PR_SET_PDEATHSIG)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and trainer_pids(killed, attempt=1):
            time.sleep(0.2)
        assert not trainer_pids(killed, attempt=1)
        done = wait_until(client, killed, lambda job: job["status"] == "succeeded", server)
        assert done["attempt"] == 2
        lines = messages(client, killed)
        resumed = [m for m in lines if m.startswith("Resuming from checkpoint step-")]
        assert len(resumed) == 1, lines
        resumed_step = int(resumed[0].removeprefix("Resuming from checkpoint step-").split()[0])
        assert 10 <= resumed_step < total
        assert any("stopped answering" in m for m in lines)
        assert sum(m.startswith("Job succeeded") for m in lines) == 1

        reference = create(client, file_id)
        baseline = wait_until(client, reference, lambda job: job["status"] == "succeeded", server)

        # the resumed run matches the run that was never interrupted
        assert (done["result_step"], done["result_reason"]) == (
            baseline["result_step"],
            baseline["result_reason"],
        )
        metrics = client.get(f"/v1/fine_tuning/jobs/{killed}/metrics").json()
        reference_metrics = client.get(f"/v1/fine_tuning/jobs/{reference}/metrics").json()
        final, expected = metrics["final"], reference_metrics["final"]
        assert final["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-4)
        assert final["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
        # metrics after the checkpoint were dropped and logged again: one row per step
        steps = [m["step"] for m in metrics["training"]]
        assert steps == sorted(set(steps)) == [m["step"] for m in reference_metrics["training"]]
        losses = [m["train_loss"] for m in metrics["training"]]
        expected_losses = [m["train_loss"] for m in reference_metrics["training"]]
        assert losses == pytest.approx(expected_losses, abs=1e-4)
        assert [c["step_number"] for c in checkpoints(client, killed)] == [
            c["step_number"] for c in checkpoints(client, reference)
        ]


def test_pause_resume_and_cancel_over_http(server: live.LiveServer, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(400, seed=4))
    with server.client() as client:
        job_id = create(client, upload(client, train))
        wait_until(client, job_id, lambda job: job["progress"]["step"] >= 2, server)
        pausing = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
        assert pausing.status_code == 200 and pausing.json()["status"] in ("pausing", "paused")
        paused = wait_until(client, job_id, lambda job: job["status"] == "paused", server)
        assert not trainer_pids(job_id)
        paused_at = checkpoints(client, job_id)[-1]["step_number"]
        assert paused["progress"]["step"] == paused_at

        resumed = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
        wait_until(
            client,
            job_id,
            lambda job: job["status"] == "running" and job["progress"]["step"] > paused_at,
            server,
        )
        assert any(f"step-{paused_at}" in m for m in messages(client, job_id))

        asked = time.monotonic()
        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
        wait_until(client, job_id, lambda job: job["status"] == "cancelled", server, timeout=10)
        assert time.monotonic() - asked < 10
        assert not trainer_pids(job_id)

        listed = checkpoints(client, job_id)
        assert listed and listed[0]["step_number"] <= paused_at
        first = listed[0]
        download = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{first['id']}/content")
        assert download.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
            names = [name.rsplit("/", 1)[-1] for name in tar.getnames()]
        assert "adapter_model.safetensors" in names and "tunery.json" in names
