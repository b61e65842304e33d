"""Runs one claimed job: checks its files, starts the trainer child, relays its events and
checkpoints, enforces cancel, pause and the lease, records the result. Torch-free: all ML
happens in the child process(es).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.errors import database_unavailable
from app.files import repository as files_repo
from app.ids import new_id
from app.jobs import repository as jobs_repo
from app.jobs import service as jobs_service
from app.jobs import state
from app.models.registry import resolve_base_model
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import FineTunedModelRow, JobCheckpointRow, JobRow
from worker.model_safety import UnsafeModel, check_model_folder
from worker.training.launch import TrainerGroup, launch
from worker.training.layout import (
    CHECKPOINTS_DIRNAME,
    MODEL_DIRNAME,
    PAUSE_FILENAME,
    SKIPPED_FILES,
    checkpoint_dirname,
    is_trainer_state,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# how long a supervisor waits for a database that went away before it gives the attempt up
DATABASE_PATIENCE_SECONDS = 600.0
PROCESSES_ENV = "TUNERY_TRAINER_PROCESSES"


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


# -- devices -------------------------------------------------------------------------------


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices this worker can use; asks torch in a throw-away process (the supervisor
    stays torch-free) and only where an NVIDIA driver is present at all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if not Path("/proc/driver/nvidia").exists():
        return 0
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return int(probe.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def trainer_processes() -> int:
    """How many trainer processes a job gets: TUNERY_TRAINER_PROCESSES, else one per GPU."""
    configured = os.environ.get(PROCESSES_ENV, "").strip()
    if configured:
        try:
            count = int(configured)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{PROCESSES_ENV} must be a positive integer, got {configured!r}")
        return count
    return max(1, cuda_device_count())


def _oom_kills() -> int | None:
    """The cgroup's count of out-of-memory kills (v2, then v1), None when unknown."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(path).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    return None


# -- the artifact store side of checkpoints -------------------------------------------------


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"models/{job_id}/checkpoints/step-{step}"


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    epoch: float | None
    metrics: dict[str, Any]
    best_step: int | None
    artifact_key: str
    state_key: str


def upload_checkpoint(
    store: ArtifactStore, job_id: str, event: dict[str, Any], work: Path
) -> StoredCheckpoint:
    """Upload outbox/step-N: the model files under .../model, the trainer state under
    .../trainer; then drop the outbox folder (its files are hard links)."""
    step = int(event["step"])
    source = (work / str(event["dir"])).resolve()
    if not source.is_relative_to(work.resolve()) or not source.is_dir():
        raise ValueError(f"checkpoint folder {event['dir']!r} is not in the job's work dir")
    prefix = checkpoint_prefix(job_id, step)
    store.delete(prefix)  # a step written again after a resume replaces the old files
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name in SKIPPED_FILES:
            continue
        part = "trainer" if is_trainer_state(path.name) else "model"
        with path.open("rb") as fh:
            store.write_stream(
                f"{prefix}/{part}/{path.relative_to(source).as_posix()}",
                iter(functools.partial(fh.read, 1 << 20), b""),
            )
    shutil.rmtree(source, ignore_errors=True)
    return StoredCheckpoint(
        step=step,
        epoch=event.get("epoch"),
        metrics=dict(event.get("metrics") or {}),
        best_step=event.get("best_step"),
        artifact_key=f"{prefix}/model",
        state_key=f"{prefix}/trainer",
    )


def download_tree(store: ArtifactStore, key: str, target: Path) -> int:
    """Copy the files under key into target (hard links from a local store); returns the count."""
    target.mkdir(parents=True, exist_ok=True)
    files = store.list_files(key)
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if store.is_local:
            source = store.local_file(f"{key}/{rel}")
            try:
                os.link(source, dest)
            except OSError:
                shutil.copy2(source, dest)
        else:
            with store.open_read(f"{key}/{rel}") as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return len(files)


class CheckpointUploads:
    """Uploads checkpoints on a thread, in order, so the relay loop keeps the lease alive."""

    def __init__(self, store: ArtifactStore, job_id: str, work: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.work = work
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"upload-{job_id}")
        self.pending: list[tuple[int, Future[StoredCheckpoint]]] = []
        self.submitted: set[int] = set()

    def submit(self, event: dict[str, Any]) -> None:
        """Start the upload of a checkpoint event; once per step (the supervisor hands an
        event over again when the database refused the pass that first saw it)."""
        step = int(event.get("step", 0))
        if step in self.submitted:
            return
        self.submitted.add(step)
        future = self.pool.submit(upload_checkpoint, self.store, self.job_id, event, self.work)
        self.pending.append((step, future))

    def finished(self) -> list[tuple[int, StoredCheckpoint | BaseException]]:
        """Uploads done and not yet recorded, in submission order."""
        done: list[tuple[int, StoredCheckpoint | BaseException]] = []
        for step, future in self.pending:
            if not future.done():
                break
            error = future.exception()
            done.append((step, error if error is not None else future.result()))
        return done

    def recorded(self, count: int) -> None:
        """The first `count` finished uploads are in the database: forget them."""
        del self.pending[:count]

    @property
    def idle(self) -> bool:
        return not self.pending

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# -- the runner -------------------------------------------------------------------------------


@dataclass
class Attempt:
    job_id: str
    number: int
    spec: dict[str, Any]
    # the checkpoint step this attempt resumes from (0: from the start)
    resumed_from: int = 0


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
        try:
            with self.make_session() as session:
                number = state.claim(session, job_id, self.owner, self.settings.lease_seconds)
                if number is None:
                    session.rollback()
                    return "not-claimed"
                row = session.get(JobRow, job_id)
                assert row is not None
                jobs_repo.add_event(
                    session, job_id, f"Attempt {number} started on {self.owner.split(':')[0]}."
                )
                session.commit()
                try:
                    # checking files and downloading checkpoints can take a while
                    with self._lease_kept(job_id, number):
                        if row.status == "validating_files":
                            self._check_files(session, row)
                        attempt = self._prepare(session, row, number)
                except _JobFailure as failure:
                    self._finish_failed(session, job_id, number, failure.as_error())
                    session.commit()
                    return "failed"
                session.commit()
            return self._supervise(attempt)
        except LeaseLost:
            log.warning("lost the lease on %s; stopping", job_id)
            return "lease-lost"

    @contextmanager
    def _lease_kept(self, job_id: str, number: int) -> Iterator[None]:
        """Renew the lease from a thread while the caller does slow I/O outside the loop."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_seconds):
                try:
                    with self.make_session() as session:
                        kept = state.renew_lease(
                            session, job_id, self.owner, number, self.settings.lease_seconds
                        )
                        session.commit()
                except Exception:
                    log.warning("renewing the lease of %s failed", job_id, exc_info=True)
                    continue
                if not kept:
                    return  # the caller finds out when it next writes the job

        thread = threading.Thread(target=beat, name=f"lease-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # -- before the trainer starts --------------------------------------------------------

    def _check_files(self, session: Session, row: JobRow) -> None:
        """validating_files: the files are checked again before anything trains."""
        error = jobs_service.check_files_again(session, self.store, row)
        if error is not None:
            raise _JobFailure(error["code"], error["message"], error["param"])
        state.files_checked(row)
        jobs_repo.add_event(session, row.id, "Files validated; training starts.")
        session.commit()

    def _prepare(self, session: Session, row: JobRow, number: int) -> Attempt:
        assert self.settings.models_dir is not None
        base = resolve_base_model(self.settings.models_dir, row.model)
        if base is None:
            raise _JobFailure(
                "model_not_found",
                f"Base model {row.model} is not in TUNERY_MODELS_DIR on this worker; install it "
                "there (or on a shared volume) and retry the job.",
                "model",
            )
        try:  # before any trainer sees it: pickle weights and model code never load
            check_model_folder(base.path)
        except UnsafeModel as exc:
            raise _JobFailure("invalid_base_model", str(exc), "model") from exc
        if row.training_type.get("type") == "qlora" and cuda_device_count() == 0:
            raise _JobFailure(
                "gpu_required",
                f"training_type qlora needs a CUDA GPU, and the worker that claimed the job "
                f"({self.owner.split(':')[0]}) has none; it never falls back to plain LoRA. "
                "Run a worker with a GPU, or create the job again with training_type lora.",
                "training_type",
            )
        try:
            processes = trainer_processes()
        except ValueError as exc:
            raise _JobFailure("worker_misconfigured", str(exc)) from exc
        files = self._file_paths(session, row)
        work = self.settings.work_dir / row.id / f"attempt-{number}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        spec: dict[str, Any] = {
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
            "processes": processes,
        }
        if row.from_checkpoint:
            spec["init_from"] = str(self._starting_checkpoint(session, row.from_checkpoint, work))
        attempt = Attempt(row.id, number, spec)
        self._restore_checkpoints(session, row, attempt, work)
        return attempt

    def _file_paths(self, session: Session, row: JobRow) -> dict[str, dict[str, str] | None]:
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
        return files

    def _starting_checkpoint(self, session: Session, checkpoint_id: str, work: Path) -> Path:
        checkpoint = jobs_repo.get_checkpoint(session, checkpoint_id)
        if checkpoint is None or not self.store.list_files(checkpoint.artifact_key):
            raise _JobFailure(
                "checkpoint_not_found",
                f"from_checkpoint {checkpoint_id} is no longer in the artifact store; start "
                "from another checkpoint or from the base model.",
                "from_checkpoint",
            )
        target = work / "init"
        download_tree(self.store, checkpoint.artifact_key, target)
        return target

    def _restore_checkpoints(
        self, session: Session, row: JobRow, attempt: Attempt, work: Path
    ) -> None:
        """Resume from the job's last stored checkpoint, if an earlier attempt left one.

        The latest comes back whole (weights and trainer state); the best one so far, which
        the trainer keeps to export at the end, comes back as weights only.
        """
        latest = jobs_repo.latest_checkpoint(session, row.id)
        if latest is None or latest.state_key is None:
            if attempt.number > 1:
                jobs_repo.clear_metrics(session, row.id)
            return
        checkpoints = work / CHECKPOINTS_DIRNAME
        try:
            target = checkpoints / checkpoint_dirname(latest.step)
            download_tree(self.store, latest.artifact_key, target)
            if not download_tree(self.store, latest.state_key, target):
                raise FileNotFoundError(f"{latest.state_key} is empty")
            best = latest.best_step
            if best is not None and best != latest.step:
                best_row = jobs_repo.checkpoint_at(session, row.id, best)
                if best_row is not None:
                    download_tree(
                        self.store, best_row.artifact_key, checkpoints / checkpoint_dirname(best)
                    )
        except (OSError, FileNotFoundError) as exc:
            raise _JobFailure(
                "checkpoint_missing",
                f"Checkpoint step {latest.step} of this job cannot be read back from the "
                f"artifact store ({exc}); the job cannot resume. Check TUNERY_STORAGE_URL.",
            ) from exc
        attempt.spec["resume"] = True
        attempt.resumed_from = latest.step
        jobs_repo.clear_metrics(session, row.id, after_step=latest.step)
        row.progress = {**(row.progress or {}), "step": latest.step}
        jobs_repo.add_event(
            session,
            row.id,
            f"Resuming from checkpoint step-{latest.step} ({latest.model_name}); metrics after "
            "that step are dropped and logged again.",
            data={"resumed_from_step": latest.step, "checkpoint": latest.id},
        )

    # -- supervising the child ------------------------------------------------------------

    def _start(self, attempt: Attempt) -> TrainerGroup:
        work = Path(attempt.spec["output_dir"])
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(attempt.spec, indent=2))
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["HF_HUB_OFFLINE"] = "0" if self.settings.allow_hub else "1"
        if self.settings.trainer_threads:
            env["TUNERY_TRAINER_THREADS"] = str(self.settings.trainer_threads)
        return launch(spec_path, int(attempt.spec.get("processes") or 1), env, work)

    def _supervise(self, attempt: Attempt) -> str:
        work = Path(attempt.spec["output_dir"])
        kills_before = _oom_kills()
        group = self._start(attempt)
        relay = EventRelay(Path(attempt.spec["events_path"]))
        uploads = CheckpointUploads(self.store, attempt.job_id, work)
        next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
        started = time.time()
        cancelled = False
        # events read from the trainer but not yet committed (the database may be away)
        backlog: list[dict[str, Any]] = []
        outage: float | None = None
        try:
            while True:
                returncode = group.poll()
                backlog.extend(relay.read_new())
                try:
                    with self.make_session() as session:
                        row = self._owned(session, attempt)
                        self._relay(session, row, attempt, backlog, relay, uploads, started)
                        recorded = self._record_uploads(session, row, attempt, uploads)
                        if time.monotonic() >= next_heartbeat:
                            if not state.renew_lease(
                                session,
                                attempt.job_id,
                                self.owner,
                                attempt.number,
                                self.settings.lease_seconds,
                            ):
                                session.commit()
                                raise LeaseLost(attempt.job_id)
                            next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
                        cancel = bool(row.cancel_requested)
                        if row.status == "pausing" and returncode is None:
                            (work / PAUSE_FILENAME).touch()
                        session.commit()
                except LeaseLost:
                    raise
                except Exception as exc:
                    if not database_unavailable(exc):
                        raise
                    # the trainer goes on; its events wait in the backlog, and the lease is
                    # renewed when the database is back (lost by then only if it expired
                    # and the reconciler gave the job to another worker)
                    if outage is None:
                        outage = time.monotonic()
                        log.warning("database away while supervising %s: %r", attempt.job_id, exc)
                    elif time.monotonic() - outage > DATABASE_PATIENCE_SECONDS:
                        raise
                    time.sleep(POLL_SECONDS)
                    continue
                backlog.clear()
                uploads.recorded(recorded)
                if outage is not None:
                    log.warning(
                        "database back after %.1f s; %s carries on",
                        time.monotonic() - outage,
                        attempt.job_id,
                    )
                    outage = None
                if cancel and not cancelled:
                    cancelled = True
                    group.terminate()
                    # one more pass relays what the trainer finished before it stopped
                    continue
                if (returncode is not None or cancelled) and uploads.idle:
                    break
                time.sleep(POLL_SECONDS)
        except BaseException:
            group.terminate()
            raise
        finally:
            uploads.close()
        if cancelled:
            return self._patiently(lambda: self._finish_cancelled(attempt), attempt.job_id)
        return self._patiently(
            lambda: self._finish(attempt, group, relay, kills_before), attempt.job_id
        )

    def _patiently(self, record: Callable[[], str], job_id: str) -> str:
        """Record an outcome, waiting (up to DATABASE_PATIENCE_SECONDS) for a database that
        went away rather than losing a finished attempt."""
        deadline = time.monotonic() + DATABASE_PATIENCE_SECONDS
        while True:
            try:
                return record()
            except Exception as exc:
                if not database_unavailable(exc) or time.monotonic() > deadline:
                    raise
                log.warning("database unavailable recording %s; retrying: %r", job_id, exc)
                time.sleep(POLL_SECONDS * 4)

    def _owned(self, session: Session, attempt: Attempt) -> JobRow:
        row = state.owned(session, attempt.job_id, self.owner, attempt.number)
        if row is None:
            raise LeaseLost(attempt.job_id)
        return row

    def _relay(
        self,
        session: Session,
        row: JobRow,
        attempt: Attempt,
        events: list[dict[str, Any]],
        relay: EventRelay,
        uploads: CheckpointUploads,
        started: float,
    ) -> None:
        """Write the child's events to the job's rows."""
        job_id = attempt.job_id
        for event in events:
            kind = event.get("type")
            if kind == "started":
                relay.started = event
                row.progress = {
                    "step": attempt.resumed_from,
                    "total_steps": event.get("total_steps"),
                    "epoch": (row.progress or {}).get("epoch", 0.0),
                }
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
                done = step - attempt.resumed_from
                if total and done > 0:
                    elapsed = time.time() - started
                    row.estimated_finish = int(time.time() + elapsed / done * (int(total) - step))
            elif kind in ("log", "eval"):
                self._record_metric(session, job_id, event)
            elif kind == "checkpoint":
                uploads.submit(event)
            elif kind == "early_stopped":
                jobs_repo.add_event(session, job_id, str(event.get("message", "")), data=event)
            elif kind == "message":
                jobs_repo.add_event(
                    session,
                    job_id,
                    str(event.get("message", "")),
                    level=str(event.get("level", "info")),
                )
            elif kind in ("succeeded", "failed", "paused"):
                relay.outcome = event

    def _record_metric(self, session: Session, job_id: str, event: dict[str, Any]) -> None:
        kind = event["type"]
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
            message = f"Step {event.get('step')}: train_loss={_fmt(event.get('train_loss'))}"
        else:
            shown = ", ".join(
                f"{k}={_fmt(v)}"
                for k, v in values.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            )
            message = f"Evaluation at step {event.get('step')}: {shown}"
        jobs_repo.add_event(session, job_id, message, type="metrics", data=event)

    def _record_uploads(
        self, session: Session, row: JobRow, attempt: Attempt, uploads: CheckpointUploads
    ) -> int:
        """Write the rows of the finished uploads; returns how many (forgotten on commit)."""
        done = uploads.finished()
        for step, result in done:
            if isinstance(result, BaseException):
                log.error("storing checkpoint %s of %s failed: %r", step, row.id, result)
                jobs_repo.add_event(
                    session,
                    row.id,
                    f"Checkpoint at step {step} could not be stored: {result}. Training goes "
                    "on; a resume would start from an earlier checkpoint.",
                    level="warning",
                )
                continue
            stored = jobs_repo.save_checkpoint(
                session,
                JobCheckpointRow(
                    id=new_id("ftckpt"),
                    job_id=row.id,
                    step=result.step,
                    epoch=result.epoch,
                    model_name=jobs_service.checkpoint_model_name(row, result.step),
                    metrics=result.metrics,
                    artifact_key=result.artifact_key,
                    state_key=result.state_key,
                    best_step=result.best_step,
                    attempt=attempt.number,
                ),
            )
            session.flush()
            jobs_repo.add_event(
                session,
                row.id,
                f"Checkpoint at step {result.step} stored: {stored.model_name}.",
                data={"checkpoint": stored.id, "step": result.step, "metrics": result.metrics},
            )
        return len(done)

    # -- outcomes ---------------------------------------------------------------------------

    def _finish(
        self,
        attempt: Attempt,
        group: TrainerGroup,
        relay: EventRelay,
        kills_before: int | None,
    ) -> str:
        returncode = group.poll()
        outcome = relay.outcome
        kind = outcome.get("type") if outcome else None
        stored: str | Exception = ""
        if kind == "succeeded" and returncode == 0:
            # uploaded before the session opens: no transaction waits on the store
            with self._lease_kept(attempt.job_id, attempt.number):
                try:
                    stored = self._store_model(attempt)
                except Exception as exc:
                    stored = exc
        with self.make_session() as session:
            if kind == "succeeded" and returncode == 0:
                assert outcome is not None
                try:
                    if isinstance(stored, Exception):
                        raise stored
                    self._record_success(session, attempt, outcome, stored)
                except LeaseLost:
                    raise
                except Exception as exc:
                    if database_unavailable(exc):
                        raise  # not the store's fault: recorded again once it is back
                    log.exception("storing the model of %s failed", attempt.job_id)
                    self._finish_failed(
                        session,
                        attempt.job_id,
                        attempt.number,
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
            if kind == "paused" and returncode == 0:
                assert outcome is not None
                self._record_pause(session, attempt, outcome)
                session.commit()
                return "paused"
            if kind == "failed":
                assert outcome is not None
                error = {
                    "code": str(outcome.get("code", "training_failed")),
                    "message": str(outcome.get("message", "training failed")),
                    "param": outcome.get("param"),
                }
            else:
                error = _crash_error(
                    returncode if returncode is not None else -1,
                    group.logs,
                    kills_before is not None and (_oom_kills() or 0) > kills_before,
                )
            self._finish_failed(session, attempt.job_id, attempt.number, error)
            session.commit()
            return "failed"

    def _store_model(self, attempt: Attempt) -> str:
        """Upload the export; returns its key."""
        key = f"models/{attempt.job_id}/model"
        self.store.delete(key)
        self.store.put_dir(Path(attempt.spec["output_dir"]) / MODEL_DIRNAME, key)
        return key

    def _record_success(
        self, session: Session, attempt: Attempt, outcome: dict[str, Any], key: str
    ) -> None:
        job_id = attempt.job_id
        model_dir = Path(attempt.spec["output_dir"]) / MODEL_DIRNAME
        meta = json.loads((model_dir / "tunery.json").read_text())
        row = self._owned(session, attempt)
        name = jobs_service.model_name(row)
        session.add(
            FineTunedModelRow(
                id=name,
                project_id=row.project_id,
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
        metric = row.hyperparameters.get("best_metric") or "eval_loss"
        jobs_repo.add_event(
            session,
            job_id,
            f"Job succeeded: the fine-tuned model is {name} (the checkpoint of step "
            f"{outcome.get('best_step')}, the best by {metric}).",
            data={
                "fine_tuned_model": name,
                "metrics": outcome.get("metrics"),
                "best_step": outcome.get("best_step"),
                "stopped_early": outcome.get("stopped_early"),
            },
        )

    def _record_pause(self, session: Session, attempt: Attempt, outcome: dict[str, Any]) -> None:
        row = self._owned(session, attempt)
        latest = jobs_repo.latest_checkpoint(session, row.id)
        state.paused(row)
        where = f"checkpoint step-{latest.step}" if latest else "the start"
        jobs_repo.add_event(
            session,
            row.id,
            f"Job paused at step {outcome.get('step')}; POST /v1/fine_tuning/jobs/{row.id}/resume "
            f"continues it from {where}.",
            data={"step": outcome.get("step"), "checkpoint": latest.id if latest else None},
        )

    def _finish_failed(
        self, session: Session, job_id: str, number: int, error: dict[str, Any]
    ) -> None:
        row = state.owned(session, job_id, self.owner, number)
        if row is None:
            raise LeaseLost(job_id)
        state.transition(row, "failed", error=error, estimated_finish=None)
        jobs_repo.add_event(
            session, job_id, f"Job failed ({error['code']}): {error['message']}", level="error"
        )

    def _finish_cancelled(self, attempt: Attempt) -> str:
        with self.make_session() as session:
            row = self._owned(session, attempt)
            state.transition(row, "cancelled", estimated_finish=None)
            jobs_repo.add_event(
                session,
                attempt.job_id,
                "Job cancelled; the trainer was stopped. Stored checkpoints stay available.",
            )
            session.commit()
        return "cancelled"


class _JobFailure(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


def _crash_error(returncode: int, logs: list[Path], oom_killed: bool) -> dict[str, Any]:
    """The error of a trainer that exited without reporting an outcome."""
    tail = ""
    for log_path in logs:
        with contextlib.suppress(OSError):
            text = log_path.read_text(errors="replace").strip()
            if text:
                tail = text[-600:]
                break
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        killed_by = f"signal {-returncode}{f' ({name})' if name else ''}"
    else:
        killed_by = ""
    if oom_killed:
        code = "out_of_memory"
        message = (
            f"The trainer was killed by the kernel for running out of host memory ({killed_by}). "
            "Lower batch_size (raise gradient_accumulation_steps to keep the effective batch), "
            "lower max_seq_length, use training_type lora, or turn on gradient_checkpointing."
        )
    elif returncode == -signal.SIGKILL:
        code = "trainer_killed"
        message = (
            "The trainer process was killed with SIGKILL from outside Tunery: by an operator, "
            "the container runtime, or the kernel's out-of-memory killer. If the machine ran "
            "short of memory, lower batch_size or max_seq_length, or use training_type lora; "
            "otherwise retry the job."
        )
    elif killed_by:
        code = "trainer_crashed"
        message = f"The trainer process died from {killed_by} without reporting a result."
    else:
        code = "trainer_crashed"
        message = f"The trainer process exited with code {returncode} without reporting a result."
    if tail:
        message += f" Last output: {tail}"
    return {"code": code, "message": message, "param": None}
