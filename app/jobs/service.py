"""Job rules: validation at create time, resolved hyperparameters, cancel."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.errors import APIError, not_found
from app.files import repository as files_repo
from app.files.formats import FORMATS_BY_TASK
from app.ids import new_id
from app.jobs import repository, state
from app.jobs.schemas import FreezeType, JobCreate, LoraType
from app.models.registry import BaseModel, list_base_models, resolve_base_model
from app.tables import FileRow, JobRow

# Base learning rates per (task, training type); learning_rate_multiplier scales these.
BASE_LEARNING_RATE = {
    ("classification", "lora"): 5e-4,
    ("classification", "full"): 5e-5,
    ("classification", "freeze"): 2e-4,
    ("causal-lm", "lora"): 2e-4,
    ("causal-lm", "full"): 2e-5,
    ("causal-lm", "freeze"): 1e-4,
}
DEFAULT_N_EPOCHS = 3
DEFAULT_BATCH_SIZE = {"classification": 16, "causal-lm": 8}
DEFAULT_MAX_SEQ_LENGTH = 256
DEFAULT_VALIDATION_SPLIT = 0.1
FORMAT_HINT = {
    "classification": 'rows {"text": ..., "label": ...} (or CSV with header text,label)',
    "causal-lm": 'rows {"prompt": ..., "completion": ...} or {"messages": [...]}',
}


def _base_model(models_dir: Path, model_id: str) -> BaseModel:
    model = resolve_base_model(models_dir, model_id)
    if model is None:
        available = [m.id for m in list_base_models(models_dir)]
        listing = (
            ", ".join(available) if available else "none (put model folders in TUNERY_MODELS_DIR)"
        )
        raise APIError(
            400,
            f"Unknown model '{model_id}'. Available base models: {listing}.",
            param="model",
            code="model_not_found",
        )
    return model


def _checked_file(session: Session, file_id: str, param: str, task: str) -> FileRow:
    row = files_repo.get(session, file_id)
    if row is None:
        raise APIError(
            400,
            f"{param} '{file_id}' does not exist; upload it with POST /v1/files.",
            param=param,
            code="file_not_found",
        )
    if row.status != "processed":
        raise APIError(
            400,
            f"{param} '{file_id}' failed validation: {row.status_details}. Fix the file and "
            "upload it again.",
            param=param,
            code="invalid_file",
        )
    if row.format not in FORMATS_BY_TASK[task]:
        raise APIError(
            400,
            f"{param} '{file_id}' is in {row.format} format, but this model does {task}, which "
            f"needs {FORMAT_HINT[task]}.",
            param=param,
            code="invalid_file_format",
        )
    return row


def _layer_count(model: BaseModel) -> int | None:
    try:
        config = json.loads((model.path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def _n_epochs(rows: int) -> int:
    return DEFAULT_N_EPOCHS


def create_job(session: Session, models_dir: Path, request: JobCreate) -> JobRow:
    base = _base_model(models_dir, request.model)
    train = _checked_file(session, request.training_file, "training_file", base.task)
    if request.validation_file is not None:
        _checked_file(session, request.validation_file, "validation_file", base.task)

    training_type = request.training_type or LoraType(type="lora")
    if isinstance(training_type, FreezeType):
        layers = _layer_count(base)
        if layers is not None and training_type.trainable_layers > layers:
            raise APIError(
                400,
                f"training_type.trainable_layers is {training_type.trainable_layers} but "
                f"{base.id} has {layers} layers; choose 0 to {layers}.",
                param="training_type.trainable_layers",
            )

    asked = request.requested_hyperparameters()
    multiplier = 1.0 if asked.learning_rate_multiplier == "auto" else asked.learning_rate_multiplier
    base_lr = BASE_LEARNING_RATE[(base.task, training_type.type)]
    learning_rate = asked.learning_rate if asked.learning_rate is not None else base_lr * multiplier
    hyperparameters: dict[str, Any] = {
        "n_epochs": _n_epochs(int(train.stats.get("rows", 0)))
        if asked.n_epochs == "auto"
        else asked.n_epochs,
        "batch_size": DEFAULT_BATCH_SIZE[base.task]
        if asked.batch_size == "auto"
        else asked.batch_size,
        "learning_rate_multiplier": learning_rate / base_lr,
        "learning_rate": learning_rate,
        "max_seq_length": asked.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
        "validation_split": asked.validation_split or DEFAULT_VALIDATION_SPLIT,
    }
    seed = request.seed if request.seed is not None else random.randint(0, 2**31 - 1)
    row = JobRow(
        id=new_id("ftjob"),
        model=base.id,
        task=base.task,
        status="queued",
        training_file=request.training_file,
        validation_file=request.validation_file,
        hyperparameters=hyperparameters,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        training_type=training_type.model_dump(),
        seed=seed,
        suffix=request.suffix or None,
        user_metadata=request.metadata,
        result_files=[],
        progress={"step": 0, "total_steps": None, "epoch": 0.0},
        enqueued_at=time.time(),
    )
    session.add(row)
    session.flush()
    repository.add_event(session, row.id, f"Created fine-tuning job {row.id} on {base.id}.")
    return row


def get_job(session: Session, job_id: str) -> JobRow:
    row = repository.get(session, job_id)
    if row is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return row


def cancel_job(session: Session, job_id: str) -> JobRow:
    row = get_job(session, job_id)
    if row.status in state.TERMINAL:
        raise APIError(
            409,
            f"Job {job_id} is already {row.status}; only queued or running jobs can be cancelled.",
            param="fine_tuning_job_id",
            code="job_not_cancellable",
        )
    row.cancel_requested = True
    if row.status in ("validating_files", "queued"):
        state.transition(row, "cancelled")
        repository.add_event(session, job_id, "Job cancelled before it started.")
    else:
        # the worker running it sees the flag within a second, stops the trainer and
        # records the cancellation
        repository.add_event(session, job_id, "Cancellation requested.")
    session.flush()
    return row


def metrics_of(session: Session, row: JobRow) -> dict[str, Any]:
    training: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    for metric in repository.list_metrics(session, row.id):
        entry = {"step": metric.step, "epoch": metric.epoch, **metric.values}
        (training if metric.kind == "train" else evaluations).append(entry)
    return {
        "object": "fine_tuning.job.metrics",
        "job_id": row.id,
        "status": row.status,
        "training": training,
        "evaluations": evaluations,
        "best_step": row.best_step,
        "final": row.final_metrics,
    }
