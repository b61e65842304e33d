"""Runs one claimed job: starts the trainer child, relays its events, enforces cancel and the
lease, records the result. Torch-free: all ML happens in the child process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.files import repository as files_repo
from app.jobs import repository as jobs_repo
from app.jobs import state
from app.models.registry import resolve_base_model
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import FineTunedModelRow, JobRow

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 5.0


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseLost(Exception):
    """Another worker (or the reconciler) took the job: stop without recording anything."""


@dataclass
class EventRelay:
    """Tails the trainer's events.jsonl and turns each line into rows."""

    path: Path
    offset: int = 0
    buffer: str = ""
    outcome: dict[str, Any] | None = None
    started: dict[str, Any] = field(default_factory=dict)

    def read_new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("r", encoding="utf-8") as fh:
            fh.seek(self.offset)
            data = fh.read()
            self.offset = fh.tell()
        self.buffer += data
        lines = self.buffer.split("\n")
        self.buffer = lines.pop()  # an unfinished line waits for its end
        events = []
        for line in lines:
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    log.warning("unreadable trainer event line: %r", line[:200])
        return events


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        make_session: sessionmaker[Session],
        store: ArtifactStore,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.make_session = make_session
        self.store = store
        self.owner = owner or worker_identity()

    # -- entry point -------------------------------------------------------------------

    def run(self, job_id: str) -> str:
        """Claim and run a job; returns what happened (for logs and tests)."""
        with self.make_session() as session:
            attempt = state.claim(session, job_id, self.owner, self.settings.lease_seconds)
            if attempt is None:
                session.rollback()
                return "not-claimed"
            row = session.get(JobRow, job_id)
            assert row is not None
            if attempt > 1:
                jobs_repo.clear_metrics(session, job_id)
            jobs_repo.add_event(
                session, job_id, f"Attempt {attempt} started on {self.owner.split(':')[0]}."
            )
            session.commit()
            try:
                spec = self._prepare(session, row, attempt)
            except _JobFailure as failure:
                self._finish_failed(session, job_id, attempt, failure.as_error())
                session.commit()
                return "failed"
            session.commit()
        try:
            return self._supervise(job_id, attempt, spec)
        except LeaseLost:
            log.warning("lost the lease on %s (attempt %s); stopping", job_id, attempt)
            return "lease-lost"

    # -- preparing the trainer's spec ---------------------------------------------------

    def _prepare(self, session: Session, row: JobRow, attempt: int) -> dict[str, Any]:
        assert self.settings.models_dir is not None
        base = resolve_base_model(self.settings.models_dir, row.model)
        if base is None:
            raise _JobFailure(
                "model_not_found",
                f"Base model {row.model} is not in TUNERY_MODELS_DIR on this worker; install it "
                "there (or on a shared volume) and retry the job.",
                "model",
            )
        files: dict[str, dict[str, str] | None] = {}
        for param, file_id in (
            ("training_file", row.training_file),
            ("validation_file", row.validation_file),
        ):
            if file_id is None:
                files[param] = None
                continue
            file_row = files_repo.get(session, file_id)
            if file_row is None:
                raise _JobFailure(
                    "file_not_found", f"{param} {file_id} was deleted; upload it again.", param
                )
            files[param] = {
                "path": str(self.store.local_file(file_row.storage_key)),
                "filename": file_row.filename,
            }
        work = self.settings.work_dir / row.id / f"attempt-{attempt}"
        work.mkdir(parents=True, exist_ok=True)
        return {
            "job_id": row.id,
            "task": row.task,
            "base_model_dir": str(base.path),
            "train_file": files["training_file"],
            "validation_file": files["validation_file"],
            "output_dir": str(work),
            "events_path": str(work / "events.jsonl"),
            "seed": row.seed,
            "hyperparameters": dict(row.hyperparameters),
            "training_type": dict(row.training_type),
        }

    # -- supervising the child ------------------------------------------------------------

    def _start_child(self, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        work = Path(spec["output_dir"])
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["HF_HUB_OFFLINE"] = "0" if self.settings.allow_hub else "1"
        if self.settings.trainer_threads:
            env["TUNERY_TRAINER_THREADS"] = str(self.settings.trainer_threads)
        log_file = (work / "trainer.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "worker.training.run", str(spec_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel kills all of it
                env=env,
                cwd=str(work),
            )
        finally:
            log_file.close()

    def _supervise(self, job_id: str, attempt: int, spec: dict[str, Any]) -> str:
        child = self._start_child(spec)
        relay = EventRelay(Path(spec["events_path"]))
        next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
        started = time.time()
        try:
            while True:
                exited = child.poll() is not None
                with self.make_session() as session:
                    events = relay.read_new()
                    cancel = self._relay(session, job_id, attempt, events, relay, started)
                    if time.monotonic() >= next_heartbeat:
                        if not state.renew_lease(
                            session, job_id, self.owner, attempt, self.settings.lease_seconds
                        ):
                            session.commit()
                            raise LeaseLost(job_id)
                        next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
                    session.commit()
                if cancel:
                    _terminate(child)
                    return self._finish_cancelled(job_id, attempt)
                if exited:
                    break
                time.sleep(POLL_SECONDS)
        except BaseException:
            _terminate(child)
            raise
        return self._finish(job_id, attempt, spec, child.returncode, relay)

    def _relay(
        self,
        session: Session,
        job_id: str,
        attempt: int,
        events: list[dict[str, Any]],
        relay: EventRelay,
        started: float,
    ) -> bool:
        """Write the child's events; returns True when a cancel was requested."""
        row = state.owned(session, job_id, self.owner, attempt)
        if row is None:
            raise LeaseLost(job_id)
        for event in events:
            kind = event.get("type")
            if kind == "started":
                relay.started = event
                row.progress = {"step": 0, "total_steps": event.get("total_steps"), "epoch": 0.0}
                jobs_repo.add_event(
                    session,
                    job_id,
                    f"Training started: {event.get('n_train')} training and "
                    f"{event.get('n_validation')} validation examples, "
                    f"{event.get('total_steps')} steps, "
                    f"{event.get('trainable_parameters')} of {event.get('total_parameters')} "
                    "parameters trainable.",
                    data=event,
                )
            elif kind == "progress":
                step, total = int(event.get("step", 0)), event.get("total_steps")
                row.progress = {"step": step, "total_steps": total, "epoch": event.get("epoch")}
                if total and step > 0:
                    elapsed = time.time() - started
                    row.estimated_finish = int(time.time() + elapsed / step * (int(total) - step))
            elif kind in ("log", "eval"):
                values = {k: v for k, v in event.items() if k not in ("type", "step", "epoch")}
                jobs_repo.add_metric(
                    session,
                    job_id,
                    "train" if kind == "log" else "eval",
                    int(event.get("step", 0)),
                    event.get("epoch"),
                    values,
                )
                if kind == "log":
                    message = (
                        f"Step {event.get('step')}: train_loss={_fmt(event.get('train_loss'))}"
                    )
                else:
                    shown = ", ".join(
                        f"{k}={_fmt(v)}"
                        for k, v in values.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)
                    )
                    message = f"Evaluation at step {event.get('step')}: {shown}"
                jobs_repo.add_event(session, job_id, message, type="metrics", data=event)
            elif kind == "message":
                jobs_repo.add_event(
                    session,
                    job_id,
                    str(event.get("message", "")),
                    level=str(event.get("level", "info")),
                )
            elif kind in ("succeeded", "failed"):
                relay.outcome = event
        return bool(row.cancel_requested)

    # -- outcomes ---------------------------------------------------------------------------

    def _finish(
        self, job_id: str, attempt: int, spec: dict[str, Any], returncode: int, relay: EventRelay
    ) -> str:
        with self.make_session() as session:
            self._relay(session, job_id, attempt, relay.read_new(), relay, time.time())
            outcome = relay.outcome
            if outcome is not None and outcome.get("type") == "succeeded" and returncode == 0:
                try:
                    self._record_success(session, job_id, attempt, spec, outcome)
                except LeaseLost:
                    raise
                except Exception as exc:
                    log.exception("storing the model of %s failed", job_id)
                    self._finish_failed(
                        session,
                        job_id,
                        attempt,
                        {
                            "code": "artifact_store_error",
                            "message": "Training finished but the model could not be stored: "
                            f"{exc}. Check TUNERY_STORAGE_URL and free space, then retry the job.",
                            "param": None,
                        },
                    )
                    session.commit()
                    return "failed"
                session.commit()
                return "succeeded"
            if outcome is not None and outcome.get("type") == "failed":
                error = {
                    "code": str(outcome.get("code", "training_failed")),
                    "message": str(outcome.get("message", "training failed")),
                    "param": outcome.get("param"),
                }
            else:
                error = _crash_error(returncode, Path(spec["output_dir"]) / "trainer.log")
            self._finish_failed(session, job_id, attempt, error)
            session.commit()
            return "failed"

    def _record_success(
        self,
        session: Session,
        job_id: str,
        attempt: int,
        spec: dict[str, Any],
        outcome: dict[str, Any],
    ) -> None:
        model_dir = Path(spec["output_dir"]) / "model"
        meta = json.loads((model_dir / "tunery.json").read_text())
        key = f"models/{job_id}/model"
        self.store.delete(key)
        self.store.put_dir(model_dir, key)
        row = state.owned(session, job_id, self.owner, attempt)
        if row is None:
            raise LeaseLost(job_id)
        name = f"ft:{row.model}:{row.suffix or ''}:{job_id}"
        session.add(
            FineTunedModelRow(
                id=name,
                job_id=job_id,
                base_model=row.model,
                task=row.task,
                training_type=str(row.training_type.get("type")),
                format=str(meta.get("format", "adapter")),
                artifact_key=key,
            )
        )
        state.transition(
            row,
            "succeeded",
            fine_tuned_model=name,
            trained_tokens=int(outcome.get("trained_tokens") or 0),
            final_metrics=outcome.get("metrics"),
            best_step=outcome.get("best_step"),
            estimated_finish=None,
        )
        if row.progress.get("total_steps"):
            row.progress = {**row.progress, "step": row.progress["total_steps"]}
        jobs_repo.add_event(
            session,
            job_id,
            f"Job succeeded: the fine-tuned model is {name}.",
            data={"fine_tuned_model": name, "metrics": outcome.get("metrics")},
        )

    def _finish_failed(
        self, session: Session, job_id: str, attempt: int, error: dict[str, Any]
    ) -> None:
        row = state.owned(session, job_id, self.owner, attempt)
        if row is None:
            raise LeaseLost(job_id)
        state.transition(row, "failed", error=error, estimated_finish=None)
        jobs_repo.add_event(
            session, job_id, f"Job failed ({error['code']}): {error['message']}", level="error"
        )

    def _finish_cancelled(self, job_id: str, attempt: int) -> str:
        with self.make_session() as session:
            row = state.owned(session, job_id, self.owner, attempt)
            if row is None:
                raise LeaseLost(job_id)
            state.transition(row, "cancelled", estimated_finish=None)
            jobs_repo.add_event(session, job_id, "Job cancelled; the trainer was stopped.")
            session.commit()
        return "cancelled"


class _JobFailure(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


def _terminate(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the trainer's process group, SIGKILL it if it lingers."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        child.wait(TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _crash_error(returncode: int, log_path: Path) -> dict[str, Any]:
    tail = ""
    with contextlib.suppress(OSError):
        tail = log_path.read_text(errors="replace")[-1500:].strip()
    if returncode in (-signal.SIGKILL, 137):
        message = (
            "The trainer process was killed (SIGKILL), most often by the kernel for running out "
            "of host memory. Lower batch_size or max_seq_length, or use LoRA."
        )
        code = "out_of_memory"
    else:
        message = f"The trainer process exited with code {returncode} without a result."
        code = "trainer_crashed"
    if tail:
        message += f" Last output: {tail[-600:]}"
    return {"code": code, "message": message, "param": None}
