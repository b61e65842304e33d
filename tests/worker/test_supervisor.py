"""The JobRunner (the Celery task's body) on a real database with the real trainer child:
checkpoints, the files checked again, cancel, pause/resume, a trainer that dies, qlora on a
worker without a GPU, two trainer processes, from_checkpoint.

Jobs are created through the in-process API; the runner is called directly (no broker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.models.service import serving_spec
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import JobRow
from tests.app.conftest import Api, api, upload_text  # noqa: F401 - the api fixture
from worker.inference.predictors import Classification
from worker.supervisor import JobRunner

pytestmark = pytest.mark.slow

POSITIVE = ["great", "wonderful", "happy", "loved"]
NEGATIVE = ["terrible", "boring", "sad", "awful"]


def sentiment_jsonl(n: int) -> str:
    rows = []
    for i in range(n):
        words = POSITIVE if i % 2 == 0 else NEGATIVE
        label = "positive" if i % 2 == 0 else "negative"
        rows.append(
            {"text": f"the movie was {words[i % 4]} and {words[(i + 1) % 4]}", "label": label}
        )
    return "".join(json.dumps(row) + "\n" for row in rows)


def prompts_jsonl(n: int) -> str:
    return "".join(
        json.dumps({"prompt": f"question: what is {i} ? answer:", "completion": f" {i % 10}"})
        + "\n"
        for i in range(n)
    )


@dataclass
class Rig:
    api: Api
    runner: JobRunner
    settings: Settings

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.api.client.app.state.sessionmaker  # type: ignore[attr-defined]

    @property
    def store(self) -> ArtifactStore:
        return self.api.client.app.state.store  # type: ignore[attr-defined]

    def create(self, text: str, model: str = "tiny-bert", **body: Any) -> str:
        file = upload_text(self.api, "train.jsonl", text)
        response = self.api.client.post(
            "/v1/fine_tuning/jobs", json={"model": model, "training_file": file["id"], **body}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api.client.get(f"/v1/fine_tuning/jobs/{job_id}").json())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        response = self.api.client.get(
            f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}
        )
        return list(reversed(response.json()["data"]))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        response = self.api.client.get(
            f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 100}
        )
        return list(reversed(response.json()["data"]))

    def run_in_thread(self, job_id: str) -> Callable[[], str]:
        outcome: list[str] = []
        thread = threading.Thread(target=lambda: outcome.append(self.runner.run(job_id)))
        thread.start()

        def join() -> str:
            thread.join(300)
            assert not thread.is_alive(), "the runner did not finish"
            return outcome[0]

        return join

    def wait(
        self, job_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if ready(job):
                return job
            if job["status"] in ("succeeded", "failed", "cancelled"):
                raise AssertionError(f"job ended before the condition held: {job}")
            time.sleep(0.2)
        raise TimeoutError(f"{job_id}: condition not met in {timeout}s: {self.job(job_id)}")


@pytest.fixture
def rig(api: Api) -> Rig:  # noqa: F811 - the imported fixture
    settings = api.settings.model_copy(
        update={"heartbeat_seconds": 0.5, "lease_seconds": 30, "trainer_threads": 1}
    )
    sessions = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    return Rig(api, JobRunner(settings, sessions, api.client.app.state.store), settings)  # type: ignore[attr-defined]


def trainer_pids(job_id: str) -> list[int]:
    """Processes running this job's trainer (its spec path names the job)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()
        except OSError:
            continue
        if b"worker.training.run" in command and any(job_id.encode() in part for part in command):
            pids.append(int(entry.name))
    return pids


def hyperparameters(**hp: Any) -> dict[str, Any]:
    return {"method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}


LORA: dict[str, Any] = {"training_type": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}}


def test_checkpoints_are_stored_listed_and_servable(rig: Rig) -> None:
    job_id = rig.create(
        sentiment_jsonl(40),
        seed=3,
        **LORA,
        **hyperparameters(
            n_epochs=2, batch_size=8, learning_rate=5e-3, max_seq_length=16, checkpoint_steps=2
        ),
    )
    assert rig.runner.run(job_id) == "succeeded"
    job = rig.job(job_id)
    assert job["status"] == "succeeded", job
    messages = [event["message"] for event in rig.events(job_id)]
    assert "Files validated; training starts." in messages

    # 36 training rows / 8 = 5 steps per epoch: steps 2 and 4, the epoch ends 5 and 10, and 6, 8
    checkpoints = rig.checkpoints(job_id)
    assert [c["step_number"] for c in checkpoints] == [2, 4, 5, 6, 8, 10]
    by_step = {c["step_number"]: c for c in checkpoints}
    assert set(by_step[5]["metrics"]) >= {"step", "train_loss", "valid_loss", "accuracy", "f1"}
    assert set(by_step[4]["metrics"]) == {"step", "train_loss"}  # no evaluation at step 4
    # no best_metric, no early stopping: the fine-tuned model is the final checkpoint
    assert job["best_step"] is None
    assert (job["result_step"], job["result_reason"], job["n_validation"]) == (10, "final", 4)
    assert job["result_checkpoint"] == by_step[10]["fine_tuned_model_checkpoint"]
    assert any(
        m.startswith(
            f"Job succeeded: the fine-tuned model is {job['fine_tuned_model']}, the final "
            "checkpoint (step 10;"
        )
        for m in messages
    )
    metrics = rig.api.client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()
    eval_steps = [m["step"] for m in metrics["evaluations"]]
    assert eval_steps == [5, 10]
    # every evaluation has the training loss of the same step beside it
    assert {m["step"] for m in metrics["training"]} >= set(eval_steps)

    for checkpoint in checkpoints:
        prefix = f"models/{job_id}/checkpoints/step-{checkpoint['step_number']}"
        model_files = set(rig.store.list_files(f"{prefix}/model"))
        assert {
            "adapter_model.safetensors",
            "adapter_config.json",
            "tunery.json",
            "tokenizer.json",
        } <= model_files
        assert not any(name.endswith((".pt", ".pth", ".bin")) for name in model_files)
        state_files = set(rig.store.list_files(f"{prefix}/trainer"))
        assert {
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
            "trainer_state.json",
        } <= state_files
        assert "training_args.bin" not in state_files
    work = rig.settings.work_dir / job_id / "attempt-1"
    assert not list((work / "outbox").iterdir())  # every hand-off was uploaded and cleared

    # a checkpoint is a model: the inference server's loader serves it
    from worker.inference.loading import ModelSpec
    from worker.inference.service import InferenceService

    with rig.sessions() as session:
        spec = serving_spec(
            session, rig.settings.models_dir or Path(), by_step[4]["fine_tuned_model_checkpoint"]
        )
    assert spec["artifact"] == f"models/{job_id}/checkpoints/step-4/model"
    predictions = cast(
        list[Classification],
        InferenceService(rig.store).predict(ModelSpec(**spec), ["the movie was great"], {}),
    )
    assert predictions[0]["label"] in ("positive", "negative")


def test_a_selected_checkpoint_is_exported_and_its_noise_warned_about(rig: Rig) -> None:
    job_id = rig.create(
        sentiment_jsonl(40),
        seed=3,
        **LORA,
        **hyperparameters(
            n_epochs=2, batch_size=8, learning_rate=5e-3, max_seq_length=16, best_metric="eval_loss"
        ),
    )
    assert rig.runner.run(job_id) == "succeeded"
    job = rig.job(job_id)
    evaluations = rig.api.client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["evaluations"]
    lowest = min(evaluations, key=lambda e: e["eval_loss"])["step"]
    assert (job["result_step"], job["result_reason"], job["best_step"]) == (
        lowest,
        "best_metric",
        lowest,
    )
    assert job["result_checkpoint"] == f"{job['fine_tuned_model']}:ckpt-step-{lowest}"
    (warning,) = [e for e in rig.events(job_id) if e["level"] == "warning"]
    assert warning["message"].startswith(
        "the validation set has 4 rows, and this job picks its checkpoint by eval_loss"
    )
    succeeded = rig.events(job_id)[-1]["message"]
    assert succeeded.endswith(
        f"the checkpoint of step {lowest}, the best by eval_loss (best_metric)."
    )


def test_files_are_checked_again_when_the_job_starts(rig: Rig) -> None:
    job_id = rig.create(sentiment_jsonl(12))
    assert rig.job(job_id)["status"] == "validating_files"
    with rig.sessions() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        file_id = row.training_file
    # the stored copy changed after the upload was checked
    (rig.store.local_dir(f"files/{file_id}") / "train.jsonl").write_text(
        '{"text": "fine", "label": "a"}\n{"text": "", "label": "b"}\n'
    )
    assert rig.runner.run(job_id) == "failed"
    job = rig.job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["param"] == "training_file" and job["error"]["code"] == "invalid_file"
    assert "line 2" in job["error"]["message"] and "failed validation" in job["error"]["message"]
    assert not trainer_pids(job_id)


def test_qlora_fails_at_claim_time_on_a_worker_without_a_gpu(rig: Rig) -> None:
    job_id = rig.create(
        prompts_jsonl(12), model="tiny-llama", training_type={"type": "qlora", "r": 4}
    )
    assert rig.runner.run(job_id) == "failed"
    error = rig.job(job_id)["error"]
    assert error["code"] == "gpu_required" and error["param"] == "training_type"
    assert "never falls back" in error["message"]


LONG = hyperparameters(n_epochs=30, batch_size=8, learning_rate=1e-3, max_seq_length=16)


def test_cancel_stops_the_trainer_and_keeps_the_checkpoints(rig: Rig) -> None:
    job_id = rig.create(sentiment_jsonl(400), **LORA, **LONG)
    join = rig.run_in_thread(job_id)
    rig.wait(job_id, lambda job: bool(rig.checkpoints(job_id)))
    assert trainer_pids(job_id)
    asked = time.monotonic()
    assert rig.api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    assert join() == "cancelled"
    assert time.monotonic() - asked < 10
    assert rig.job(job_id)["status"] == "cancelled"
    assert not trainer_pids(job_id)
    checkpoints = rig.checkpoints(job_id)
    assert checkpoints
    download = rig.api.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoints[0]['id']}/content"
    )
    assert download.status_code == 200 and len(download.content) > 0


def test_pause_saves_a_checkpoint_and_resume_continues_from_it(rig: Rig) -> None:
    job_id = rig.create(sentiment_jsonl(400), seed=5, **LORA, **LONG)
    join = rig.run_in_thread(job_id)
    rig.wait(job_id, lambda job: job["progress"]["step"] >= 3)
    assert rig.api.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()["status"] == "pausing"
    assert join() == "paused"
    job = rig.job(job_id)
    assert job["status"] == "paused" and not trainer_pids(job_id)
    paused_step = rig.checkpoints(job_id)[-1]["step_number"]
    assert paused_step >= 3
    assert any(f"Job paused at step {paused_step}" in e["message"] for e in rig.events(job_id))

    assert rig.api.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()["status"] == "queued"
    join = rig.run_in_thread(job_id)
    resumed = rig.wait(job_id, lambda job: job["attempt"] == 2 and job["status"] == "running")
    assert resumed["progress"]["step"] >= paused_step
    # the second attempt starts where the first stopped
    log = rig.settings.work_dir / job_id / "attempt-2" / "events.jsonl"
    rig.wait(job_id, lambda job: log.exists() and '"progress"' in log.read_text())
    first_progress = next(
        json.loads(line) for line in log.read_text().splitlines() if '"progress"' in line
    )
    assert first_progress["step"] == paused_step + 1
    messages = [e["message"] for e in rig.events(job_id)]
    assert any(m.startswith(f"Resuming from checkpoint step-{paused_step}") for m in messages)
    rig.api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert join() == "cancelled"


def test_a_trainer_that_dies_fails_the_job_with_a_code(rig: Rig) -> None:
    job_id = rig.create(sentiment_jsonl(400), **LORA, **LONG)
    join = rig.run_in_thread(job_id)
    rig.wait(job_id, lambda job: job["progress"]["step"] >= 1)
    for pid in trainer_pids(job_id):
        os.kill(pid, signal.SIGKILL)
    assert join() == "failed"
    error = rig.job(job_id)["error"]
    assert error["code"] in ("trainer_killed", "out_of_memory"), error
    assert "SIGKILL" in error["message"]


def test_two_trainer_processes_on_cpu(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNERY_TRAINER_PROCESSES", "2")
    job_id = rig.create(
        sentiment_jsonl(32),
        seed=4,
        **LORA,
        **hyperparameters(n_epochs=1, batch_size=4, learning_rate=5e-3, max_seq_length=16),
    )
    assert rig.runner.run(job_id) == "succeeded", rig.job(job_id)
    messages = [e["message"] for e in rig.events(job_id)]
    assert sum(m.startswith("Training started") for m in messages) == 1  # rank 0 reports
    started = next(e for e in rig.events(job_id) if e["message"].startswith("Training started"))
    # 28 training rows over 2 processes of batch 4: 4 steps
    assert started["data"]["total_steps"] == 4
    (checkpoint,) = rig.checkpoints(job_id)
    state_files = rig.store.list_files(f"models/{job_id}/checkpoints/step-4/trainer")
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(state_files)
    assert checkpoint["metrics"]["valid_loss"] > 0


def test_a_job_starts_from_another_jobs_checkpoint(rig: Rig) -> None:
    body = {
        **LORA,
        # a first job that clearly learns (its first evaluation 0.698 -> its last 0.686, and the
        # second job's first 0.546 in one run): 2 epochs at 1e-2 stayed at ln 2 +- 1e-4 on the
        # 4 validation rows, and the comparison below became a coin toss (it failed in CI)
        **hyperparameters(n_epochs=6, batch_size=8, learning_rate=3e-2, max_seq_length=16),
    }
    first = rig.create(sentiment_jsonl(40), seed=1, **body)
    assert rig.runner.run(first) == "succeeded"
    last = rig.checkpoints(first)[-1]
    second = rig.create(sentiment_jsonl(40), seed=1, from_checkpoint=last["id"], **body)
    assert rig.runner.run(second) == "succeeded", rig.job(second)

    def first_eval_loss(job_id: str) -> float:
        metrics = rig.api.client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()
        return float(metrics["evaluations"][0]["eval_loss"])

    # the second job starts where the first ended, so its first epoch already does better
    assert first_eval_loss(second) < first_eval_loss(first)


class Watched:
    """The artifact store, checking that the calling thread holds no database session: a
    transaction must never wait on a download or an upload."""

    CALLS = ("local_file", "local_dir", "list_files", "open_read", "write_stream", "put_dir")

    def __init__(self, store: ArtifactStore, open_sessions: threading.local) -> None:
        self._store = store
        self._open = open_sessions
        self.called: set[str] = set()
        self.violations: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in self.CALLS:
            return attribute

        def checked(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._open, "count", 0):
                self.violations.append(f"{name}{args} called inside a session")
            self.called.add(name)
            return attribute(*args, **kwargs)

        return checked


def test_no_session_is_open_across_a_download_or_an_upload(rig: Rig) -> None:
    open_sessions = threading.local()

    @contextlib.contextmanager
    def counted() -> Iterator[Session]:
        open_sessions.count = getattr(open_sessions, "count", 0) + 1
        try:
            with rig.sessions() as session:
                yield session
        finally:
            open_sessions.count -= 1

    store = Watched(rig.store, open_sessions)
    runner = JobRunner(rig.settings, cast(Any, counted), cast(ArtifactStore, store))
    body = {
        **LORA,
        **hyperparameters(n_epochs=30, batch_size=8, max_seq_length=16, checkpoint_steps=1),
    }
    # files checked again, checkpoints uploaded, a pause, a resume that downloads them back
    first = rig.create(sentiment_jsonl(24), **body)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run(first)))
    thread.start()
    rig.wait(first, lambda job: bool(store.violations or rig.checkpoints(first)))
    assert not store.violations
    rig.api.client.post(f"/v1/fine_tuning/jobs/{first}/pause")
    thread.join(120)
    assert outcome == ["paused"]
    rig.api.client.post(f"/v1/fine_tuning/jobs/{first}/resume")
    thread = threading.Thread(target=lambda: outcome.append(runner.run(first)))
    thread.start()
    rig.wait(first, lambda job: job["attempt"] == 2 and job["progress"]["step"] > 0)
    rig.api.client.post(f"/v1/fine_tuning/jobs/{first}/cancel")
    thread.join(120)
    assert outcome == ["paused", "cancelled"]
    assert any(e["message"].startswith("Resuming from checkpoint") for e in rig.events(first))
    # a job started from a checkpoint, trained to the end: the model is uploaded
    checkpoint = rig.checkpoints(first)[0]["id"]
    short = {**LORA, **hyperparameters(n_epochs=1, batch_size=8, max_seq_length=16)}
    second = rig.create(sentiment_jsonl(24), from_checkpoint=checkpoint, **short)
    assert runner.run(second) == "succeeded", rig.job(second)
    assert not store.violations
    assert {"local_file", "list_files", "write_stream", "put_dir"} <= store.called
