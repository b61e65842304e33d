"""Preparing an attempt: the files checked again (a job claimed in validating_files), the
base model and the worker checked, the data and checkpoints fetched, the trainer's spec.

Each database phase is its own short session; the artifact store (file downloads, checkpoint
trees) is only touched between them, never with a transaction open.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.failures import Failure
from app.jobs import outcomes
from app.jobs import repository as jobs_repo
from app.jobs import service as jobs_service
from app.jobs.spec import TrainSpec, parse_spec, trainer_hyperparameters, trainer_method
from app.model_safety import UnsafeModel, check_model_folder
from app.models.registry import resolve_base_model
from app.settings import Settings
from app.storage import ArtifactStore
from app.sweeps import repository as sweeps_repo
from app.tables import JobCheckpointRow, JobRow
from worker.supervisor.devices import cuda_device_count, trainer_processes
from worker.supervisor.lease import Lease
from worker.supervisor.pull import pull_base
from worker.supervisor.transfer import download_tree
from worker.training.layout import CHECKPOINTS_DIRNAME, checkpoint_dirname


@dataclass
class Attempt:
    lease: Lease
    spec: TrainSpec
    # the checkpoint step this attempt resumes from (0: from the start)
    resumed_from: int = 0

    @property
    def job_id(self) -> str:
        return self.lease.job_id

    @property
    def number(self) -> int:
        return self.lease.number

    @property
    def work(self) -> Path:
        return self.spec.output_dir


@dataclass(frozen=True)
class _Sources:
    """Where an attempt's inputs are in the store, read in one short session."""

    files: list[jobs_service.JobFile]
    # from_checkpoint: the model to start from
    start: JobCheckpointRow | None
    # the job's own checkpoints to resume from: the latest, and the best so far
    latest: JobCheckpointRow | None
    best: JobCheckpointRow | None


def prepare(
    settings: Settings,
    make_session: sessionmaker[Session],
    store: ArtifactStore,
    lease: Lease,
) -> Attempt:
    """Everything the trainer needs, or the Failure to fail the job with."""
    with make_session() as session:
        row = lease.owned(session)
        files = jobs_service.job_files(session, row) if row.status == "validating_files" else None
    if files is not None:
        jobs_service.check_files_again(
            store, row.task, files, trainer_method(row.method or {})["type"], settings
        )
        with make_session() as session:
            outcomes.files_validated(session, lease.owned(session))
            session.commit()
    if row.model_sha is not None and resolve_base_model(settings.models_dir, row.model) is None:
        pull_base(settings, make_session, lease, row)
    base_dir, processes = _check_worker(settings, row, lease.owner)
    with make_session() as session:
        sources = _sources(session, row)
        # a sweep trial's trainer waits for the pruner's verdict on each evaluation
        judged = sweeps_repo.judged_by_pruner(session, row.id)
    work = settings.work_dir / row.id / f"attempt-{lease.number}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    raw: dict[str, Any] = {
        "job_id": row.id,
        "task": row.task,
        "base_model_dir": str(base_dir),
        "output_dir": str(work),
        "events_path": str(work / "events.jsonl"),
        "seed": row.seed,
        "hyperparameters": trainer_hyperparameters(row.hyperparameters),
        "method": trainer_method(row.method or {}),
        "training_type": dict(row.training_type),
        "processes": processes,
        "validation_file": None,
        "verdict_seconds": settings.sweep_verdict_seconds if judged else 0.0,
    }
    for file in sources.files:
        key = "train_file" if file.param == "training_file" else "validation_file"
        raw[key] = {"path": str(store.local_file(file.storage_key)), "filename": file.filename}
    if row.from_checkpoint:
        raw["init_from"] = str(_starting_checkpoint(store, row.from_checkpoint, sources, work))
    resumed_from = _restore_checkpoints(store, sources, work)
    raw["resume"] = resumed_from > 0
    spec = parse_spec(raw)
    with make_session() as session:
        owned = lease.owned(session)
        if sources.latest is not None and resumed_from:
            outcomes.resuming(session, owned, sources.latest)
        elif lease.number > 1:
            outcomes.restarting(session, owned)
        session.commit()
    return Attempt(lease, spec, resumed_from)


def _check_worker(settings: Settings, row: JobRow, owner: str) -> tuple[Path, int]:
    """(the base model's folder, the trainer processes) on this worker, or a Failure."""
    assert settings.models_dir is not None
    base = resolve_base_model(settings.models_dir, row.model)
    if base is None:
        raise Failure(
            "model_not_found",
            f"Base model {row.model} is not in TUNERY_MODELS_DIR on this worker; install it "
            "there (or on a shared volume) and retry the job.",
            "model",
        )
    if row.model_sha is not None and base.sha is not None and base.sha != row.model_sha:
        raise Failure(
            "base_model_changed",
            f"This job was created on {row.model} at Hub commit {row.model_sha}, but this "
            f"worker's TUNERY_MODELS_DIR holds commit {base.sha}. Create the job again to "
            "train on the folder as it is, or pull that commit back (tunery models pull "
            f"{row.model} --revision {row.model_sha}).",
            "model",
        )
    try:  # before any trainer sees it: pickle weights and model code never load
        check_model_folder(base.path)
    except UnsafeModel as exc:
        raise Failure("invalid_base_model", str(exc), "model") from exc
    if row.training_type.get("type") == "qlora" and cuda_device_count() == 0:
        raise Failure(
            "gpu_required",
            f"training_type qlora needs a CUDA GPU, and the worker that claimed the job "
            f"({owner.split(':')[0]}) has none; it never falls back to plain LoRA. "
            "Run a worker with a GPU, or create the job again with training_type lora.",
            "training_type",
        )
    try:
        processes = trainer_processes()
    except ValueError as exc:
        raise Failure("worker_misconfigured", str(exc)) from exc
    return base.path, processes


def _sources(session: Session, row: JobRow) -> _Sources:
    files = jobs_service.job_files(session, row)
    start = jobs_repo.get_checkpoint(session, row.from_checkpoint) if row.from_checkpoint else None
    latest = jobs_repo.latest_checkpoint(session, row.id)
    best = None
    if latest is not None and latest.best_step is not None and latest.best_step != latest.step:
        best = jobs_repo.checkpoint_at(session, row.id, latest.best_step)
    return _Sources(files, start, latest, best)


def _starting_checkpoint(
    store: ArtifactStore, checkpoint_id: str, sources: _Sources, work: Path
) -> Path:
    start = sources.start
    if start is None or not store.list_files(start.artifact_key):
        raise Failure(
            "checkpoint_not_found",
            f"from_checkpoint {checkpoint_id} is no longer in the artifact store; start "
            "from another checkpoint or from the base model.",
            "from_checkpoint",
        )
    target = work / "init"
    download_tree(store, start.artifact_key, target)
    return target


def _restore_checkpoints(store: ArtifactStore, sources: _Sources, work: Path) -> int:
    """Bring back the job's last stored checkpoint, if an earlier attempt left one; returns
    its step (0: none, the attempt starts over).

    The latest comes back whole (weights and trainer state); the best one so far, which the
    trainer keeps to export at the end, comes back as weights only.
    """
    latest = sources.latest
    if latest is None or latest.state_key is None:
        return 0
    checkpoints = work / CHECKPOINTS_DIRNAME
    try:
        target = checkpoints / checkpoint_dirname(latest.step)
        download_tree(store, latest.artifact_key, target)
        if not download_tree(store, latest.state_key, target):
            raise FileNotFoundError(f"{latest.state_key} is empty")
        best = sources.best
        if best is not None:
            download_tree(store, best.artifact_key, checkpoints / checkpoint_dirname(best.step))
    except (OSError, FileNotFoundError) as exc:
        raise Failure(
            "checkpoint_missing",
            f"Checkpoint step {latest.step} of this job cannot be read back from the "
            f"artifact store ({exc}); the job cannot resume. Check TUNERY_STORAGE_URL.",
        ) from exc
    return latest.step
