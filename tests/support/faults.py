"""What the fault tests share: fast leases and job helpers over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support import live

# leases that expire in seconds, a reconciler that looks every second
FAST = {
    "TUNERY_LEASE_SECONDS": "6",
    "TUNERY_HEARTBEAT_SECONDS": "1",
    "TUNERY_RECONCILE_EVERY_SECONDS": "1",
    "TUNERY_TRAINER_THREADS": "1",
}


def job_body(file_id: str, epochs: int = 1, **hyperparameters: Any) -> dict[str, Any]:
    """A tiny-bert LoRA job: ~6 s to start the trainer, then ~25 steps per epoch of 200 rows."""
    return {
        "model": "tiny-bert",
        "training_file": file_id,
        "seed": 3,
        "training_type": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": epochs,
                    "batch_size": 8,
                    "learning_rate": 5e-3,
                    "max_seq_length": 16,
                    **hyperparameters,
                }
            },
        },
    }


def upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"}
        )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def create_job(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_job(
    client: httpx.Client,
    job_id: str,
    ready: Callable[[dict[str, Any]], bool],
    server: live.LiveServer,
    timeout: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/fine_tuning/jobs/{job_id}")
        if response.status_code == 200:
            job = response.json()
            if ready(job):
                return job
            if job["status"] in ("failed", "cancelled"):
                break
        time.sleep(0.3)
    raise AssertionError(f"{job_id} never got there: {job}\n{server.log_tail()}")


def events(client: httpx.Client, job_id: str) -> list[str]:
    """Every event message of the job, oldest first (paging through the list)."""
    messages: list[str] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        messages.extend(event["message"] for event in page["data"])
        if not page["has_more"]:
            return list(reversed(messages))
        params["after"] = page["data"][-1]["id"]


def attempts_started(client: httpx.Client, job_id: str) -> int:
    return sum(m.startswith("Attempt ") and " started on " in m for m in events(client, job_id))


def child_pids(parent: int, marker: bytes) -> list[int]:
    """Processes whose parent is `parent` and whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and marker in command:
            found.append(int(entry.name))
    return found


def wait_inference_up(client: httpx.Client, timeout: float = 60) -> None:
    """`tunery serve` answers before its inference child does; /readyz tells."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").json()["checks"]["inference"] != "ok":
        assert time.monotonic() < deadline, "the inference server never came up"
        time.sleep(0.2)


def stop_at_first_checkpoint(
    client: httpx.Client,
    job_id: str,
    trainers: Callable[[], list[int]],
    server: live.LiveServer,
    timeout: float = 240,
    slice_seconds: float = 0.05,
) -> list[int]:
    """Let the job's trainer processes run in short slices, stopped (SIGSTOP) in between,
    until the job lists a checkpoint; return their pids, still stopped, so the caller's
    fault lands mid-training however fast the trainer is: it cannot finish between the
    look and the fault. The caller kills or continues (SIGCONT) them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = trainers()
        _signal_all(pids, signal.SIGCONT)
        time.sleep(slice_seconds)
        _signal_all(pids, signal.SIGSTOP)
        # once the trainer has written a checkpoint it stays stopped until the supervisor
        # lists it: listing takes seconds on a busy machine, the trainer's slices would
        # otherwise carry it to its last step meanwhile
        written = any(_wrote_checkpoint(pid) for pid in pids)
        while True:
            response = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")
            assert response.status_code == 200, response.text
            if response.json()["data"]:
                return pids
            if not written or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] not in ("succeeded", "failed", "cancelled"), (
            f"{job_id} ended before its first checkpoint: {job}"
        )
    _signal_all(trainers(), signal.SIGCONT)
    raise AssertionError(f"{job_id} listed no checkpoint in {timeout} s\n{server.log_tail()}")


def _wrote_checkpoint(pid: int) -> bool:
    """Whether the trainer `pid` has written a checkpoint event (its working directory is
    the attempt's, with events.jsonl in it)."""
    try:
        events = (Path(f"/proc/{pid}/cwd").resolve() / "events.jsonl").read_text()
    except OSError:
        return False
    return '"type": "checkpoint"' in events


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
