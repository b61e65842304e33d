"""Job rules: validation at create time, resolved hyperparameters, cancel, pause, resume,
the files checked again when a job starts, and checkpoints. What a worker's reports do to a
job lives beside this, in outcomes.py."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

import task_plugins
from app.auth import quota_exceeded
from app.failures import APIError, Failure, not_found
from app.files import repository as files_repo
from app.files.formats import file_kind_named, inspect_file
from app.ids import new_id
from app.jobs import repository, state
from app.jobs.hyperparameters import DEFAULT_VALIDATION_SPLIT, resolve_hyperparameters
from app.jobs.methods import (
    check_dpo_options,
    check_method,
    method_of,
    method_settings,
    stored_method,
)
from app.jobs.schemas import JobCreate
from app.jobs.spec import (
    ADAPTER_TYPES,
    FreezeType,
    LoraType,
    TrainingType,
    training_type_of,
)
from app.models.registry import BaseModel, list_base_models, resolve_base_model
from app.settings import Settings
from app.storage import ArtifactStore
from app.tables import FileRow, JobCheckpointRow, JobRow
from task_plugins.base import UploadRefused

# the jobs TUNERY_QUOTA_CONCURRENT_JOBS counts: every one that has not finished
QUOTA_STATUSES = tuple(sorted(state.ACTIVE))


def _base_model(models_dir: Path, model_id: str) -> BaseModel:
    model = resolve_base_model(models_dir, model_id)
    if model is None:
        pull = (
            f" To fetch it from the Hugging Face Hub, run `tunery models pull {model_id}` (with "
            "an admin key; POST /v1/models/pull) first, or turn TUNERY_HUB_AUTO_PULL on."
            if "/" in model_id and not model_id.startswith("ft:")
            else ""
        )
        available = [m.id for m in list_base_models(models_dir)]
        listing = (
            ", ".join(available) if available else "none (put model folders in TUNERY_MODELS_DIR)"
        )
        raise APIError(
            400,
            f"Unknown model '{model_id}'. Available base models: {listing}.{pull}",
            param="model",
            code="model_not_found",
        )
    return model


def _check_base_for(base: BaseModel, file: FileRow) -> None:
    """The task's own check of the base for this file (e.g. a chat template that cannot
    render the file's tool calls)."""
    check = task_plugins.get(base.task).check_base
    if check is None or not base.path.is_dir():
        return  # a base the worker still has to pull is checked when its job starts
    problem = check(base.path, file.stats or {})
    if problem:
        message = f"{problem[:1].upper()}{problem[1:]}."
        raise APIError(400, message, param="model", code="unsupported_chat_template")


def _checked_file(
    session: Session,
    file_id: str,
    param: str,
    task: str,
    project_id: str,
    method: str = task_plugins.SUPERVISED,
) -> FileRow:
    row = files_repo.get(session, file_id, project_id)
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
    plugin = task_plugins.get(task)
    if row.format not in plugin.formats_for(method):
        raise APIError(
            400,
            f"{param} '{file_id}' is in {row.format} format, but a {method} job on this model "
            f"({task}) needs {_format_hint(task, method)}.",
            param=param,
            code="invalid_file_format",
        )
    return row


def _format_hint(task: str, method: str) -> str:
    plugin = task_plugins.get(task)
    if method == task_plugins.SUPERVISED:
        return plugin.format_hint
    formats = " or ".join(plugin.formats_for(method))
    if method == task_plugins.DPO:
        return (
            f'{formats} rows ({{"input": {{"messages": [...]}}, "preferred_output": [...], '
            f'"non_preferred_output": [...]}} or {{"prompt", "chosen", "rejected"}})'
        )
    return f"{formats} rows"


def _fine_tuned_start(session: Session, request: JobCreate, project_id: str) -> JobCreate:
    """A request whose model is a fine-tuned model ("ft:...", as OpenAI allows): the same
    request on that job's base model, from the checkpoint the fine-tuned model was exported
    from (its result_step: the final one by default, or the named checkpoint)."""
    if not request.model.startswith("ft:"):
        return request
    if request.from_checkpoint is not None:
        raise APIError(
            400,
            f"model is the fine-tuned model {request.model} and from_checkpoint is "
            f"{request.from_checkpoint}: give one of them (model set to the base model with "
            "from_checkpoint, or model alone).",
            param="from_checkpoint",
        )
    checkpoint = repository.checkpoint_by_model_name(session, request.model)
    if checkpoint is None:
        job = repository.get(session, request.model.rsplit(":", 1)[-1], project_id)
        # the step it was exported from: the final one by default, the best when selected
        step = None if job is None else job.result_step
        if step is None and job is not None:
            step = job.best_step  # jobs that finished before result_step existed
        if job is not None and job.fine_tuned_model == request.model and step is not None:
            checkpoint = repository.checkpoint_at(session, job.id, step)
    source = repository.get(session, checkpoint.job_id, project_id) if checkpoint else None
    if checkpoint is None or source is None:
        raise APIError(
            400,
            f"model '{request.model}' is no fine-tuned model of this project (or its "
            "checkpoints were deleted); list them with GET /v1/models, or name a base model.",
            param="model",
            code="model_not_found",
        )
    return request.model_copy(update={"model": source.model, "from_checkpoint": checkpoint.id})


def _layer_count(model: BaseModel) -> int | None:
    try:
        config = json.loads((model.path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def model_name(job: JobRow) -> str:
    """The fine-tuned model's name: ft:<base>:<suffix>:<job id>."""
    return f"ft:{job.model}:{job.suffix or ''}:{job.id}"


def checkpoint_model_name(job: JobRow, step: int) -> str:
    return f"{model_name(job)}:ckpt-step-{step}"


def _source_checkpoint(
    session: Session,
    reference: str,
    base: BaseModel,
    asked: TrainingType | None,
    project_id: str,
) -> tuple[JobCheckpointRow, dict[str, Any]]:
    """The checkpoint from_checkpoint names, and the training type the new job uses."""
    checkpoint = repository.get_checkpoint(session, reference) or (
        repository.checkpoint_by_model_name(session, reference)
    )
    source = (
        repository.get(session, checkpoint.job_id, project_id) if checkpoint is not None else None
    )
    if checkpoint is None or source is None:
        raise APIError(
            400,
            f"from_checkpoint '{reference}' does not exist; list a job's checkpoints with GET "
            "/v1/fine_tuning/jobs/{id}/checkpoints and pass an id or fine_tuned_model_checkpoint.",
            param="from_checkpoint",
            code="checkpoint_not_found",
        )
    if source.model != base.id:
        raise APIError(
            400,
            f"Checkpoint {checkpoint.id} was trained from {source.model}, not {base.id}; set "
            f"model to {source.model}.",
            param="model",
            code="checkpoint_model_mismatch",
        )
    inherited = training_type_of(source.training_type).model_dump()
    if asked is None:
        return checkpoint, inherited
    wanted = asked.model_dump()
    source_adapter = inherited.get("type") in ADAPTER_TYPES
    if source_adapter != (wanted["type"] in ADAPTER_TYPES) or (
        source_adapter
        and (wanted["r"], wanted["target_modules"])
        != (inherited.get("r"), inherited.get("target_modules"))
    ):
        holds, use = (
            ("a LoRA adapter", "lora or qlora with the same r and target_modules")
            if source_adapter
            else ("a whole model", "full or freeze")
        )
        raise APIError(
            400,
            f"Checkpoint {checkpoint.id} holds {holds} (training_type {inherited}); a job "
            f"started from it continues that: use {use}, or leave training_type out to "
            "inherit it.",
            param="training_type",
            code="checkpoint_training_type_mismatch",
        )
    return checkpoint, wanted


def _check_job_quota(session: Session, project_id: str, quota: int | None) -> None:
    if quota is None:
        return
    unfinished = repository.count_unfinished(session, project_id, QUOTA_STATUSES)
    if unfinished >= quota:
        raise quota_exceeded(
            f"The project has {unfinished} unfinished jobs (queued, running, pausing or "
            f"paused) and its quota is {quota} at a time. Wait for one to finish, cancel one "
            "with POST /v1/fine_tuning/jobs/{id}/cancel, or ask the operator to raise "
            "TUNERY_QUOTA_CONCURRENT_JOBS.",
            retry_after=30,
        )


def create_job(
    session: Session,
    models_dir: Path,
    request: JobCreate,
    *,
    project_id: str,
    max_unfinished: int | None = None,
    pending: BaseModel | None = None,
) -> JobRow:
    """`pending`: the base model a worker pulls from the Hub before it trains (auto-pull)."""
    request = _fine_tuned_start(session, request, project_id)
    base = pending or _base_model(models_dir, request.model)
    method = method_of(request)
    check_method(method, base.task, base.id)
    check_dpo_options(request)
    train = _checked_file(
        session, request.training_file, "training_file", base.task, project_id, method
    )
    _check_base_for(base, train)
    if request.validation_file is not None:
        validation = _checked_file(
            session, request.validation_file, "validation_file", base.task, project_id, method
        )
        _check_base_for(base, validation)

    source: JobCheckpointRow | None = None
    if request.from_checkpoint is not None:
        source, training_type_fields = _source_checkpoint(
            session, request.from_checkpoint, base, request.training_type, project_id
        )
    else:
        training_type_fields = (request.training_type or LoraType(type="lora")).model_dump()
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
    n_rows = int(train.stats.get("rows", 0))
    if request.validation_file is None:
        # the rows validation_split holds out do not train
        n_rows = round(n_rows * (1 - (asked.validation_split or DEFAULT_VALIDATION_SPLIT)))
    hyperparameters = resolve_hyperparameters(
        asked, base.task, str(training_type_fields["type"]), n_rows, method
    )
    seed = request.seed if request.seed is not None else random.randint(0, 2**31 - 1)
    # last, so a request that is wrong anyway says what is wrong with it first
    _check_job_quota(session, project_id, max_unfinished)
    row = JobRow(
        id=new_id("ftjob"),
        project_id=project_id,
        model=base.id,
        model_sha=base.sha,
        task=base.task,
        # the worker that claims it checks the files again before training
        status="validating_files",
        training_file=request.training_file,
        validation_file=request.validation_file,
        hyperparameters=hyperparameters,
        method=stored_method(method, hyperparameters, method_settings(request)),
        training_type=training_type_fields,
        from_checkpoint=source.id if source is not None else None,
        seed=seed,
        suffix=request.suffix or None,
        user_metadata=request.metadata,
        result_files=[],
        progress={"step": 0, "total_steps": None, "epoch": 0.0},
        enqueued_at=time.time(),
    )
    session.add(row)
    session.flush()
    at = f" at Hub commit {base.sha}" if base.sha else ""
    repository.add_event(session, row.id, f"Created fine-tuning job {row.id} on {base.id}{at}.")
    if pending is not None:
        repository.add_event(
            session,
            row.id,
            f"{base.id} is not in TUNERY_MODELS_DIR yet: the worker pulls it from the Hub "
            "first (TUNERY_HUB_AUTO_PULL).",
        )
    if source is not None:
        repository.add_event(
            session,
            row.id,
            f"Starting from checkpoint {source.id} ({source.model_name}): its weights, with a "
            "fresh optimizer and schedule.",
        )
    return row


def get_job(session: Session, job_id: str, project_id: str) -> JobRow:
    row = repository.get(session, job_id, project_id)
    if row is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return row


def cancel_job(session: Session, job_id: str, project_id: str) -> JobRow:
    row = get_job(session, job_id, project_id)
    if row.status in state.TERMINAL:
        raise APIError(
            409,
            f"Job {job_id} is already {row.status}; only unfinished jobs can be cancelled.",
            param="fine_tuning_job_id",
            code="job_not_cancellable",
        )
    row.cancel_requested = True
    if row.status in ("validating_files", "queued", "paused"):
        was = row.status
        state.transition(row, "cancelled")
        repository.add_event(
            session,
            job_id,
            "Job cancelled while paused; its checkpoints stay available."
            if was == "paused"
            else "Job cancelled before it started.",
        )
    else:
        # the worker running it sees the flag within a second, stops the trainer and
        # records the cancellation
        repository.add_event(session, job_id, "Cancellation requested.")
    session.flush()
    return row


def pause_job(session: Session, job_id: str, project_id: str) -> JobRow:
    row = get_job(session, job_id, project_id)
    if row.status in ("pausing", "paused"):
        return row
    if row.status != "running":
        raise APIError(
            409,
            f"Job {job_id} is {row.status}; only a running job can be paused (cancel a job "
            "that has not started yet).",
            param="fine_tuning_job_id",
            code="job_not_pausable",
        )
    state.request_pause(row)
    repository.add_event(
        session, job_id, "Pause requested: the trainer saves a checkpoint at its next step."
    )
    session.flush()
    return row


def resume_job(session: Session, job_id: str, project_id: str) -> JobRow:
    row = get_job(session, job_id, project_id)
    if row.status != "paused":
        raise APIError(
            409,
            f"Job {job_id} is {row.status}; only a paused job can be resumed.",
            param="fine_tuning_job_id",
            code="job_not_paused",
        )
    state.resume(row, time.time())
    latest = repository.latest_checkpoint(session, job_id)
    where = f"checkpoint step {latest.step}" if latest else "the start (no checkpoint was stored)"
    repository.add_event(session, job_id, f"Job resumed; it continues from {where}.")
    session.flush()
    return row


@dataclass(frozen=True)
class JobFile:
    """One of a job's files, as the worker fetches and checks it."""

    param: str  # "training_file" or "validation_file"
    file_id: str
    storage_key: str
    filename: str
    # what the upload's validation found (the file row): an archive validated in full at
    # upload is not decoded again at job start, only its size and its kind's recheck
    status: str | None = None
    format: str | None = None
    bytes: int | None = None


def job_files(session: Session, row: JobRow) -> list[JobFile]:
    """The job's files as they are stored now; raises Failure("file_not_found") for one
    deleted since the job was created."""
    files = []
    for param, file_id in (
        ("training_file", row.training_file),
        ("validation_file", row.validation_file),
    ):
        if file_id is None:
            continue
        file_row = files_repo.get(session, file_id, row.project_id)
        if file_row is None:
            raise Failure(
                "file_not_found",
                f"{param} {file_id} was deleted after the job was created; upload it again and "
                "create a new job.",
                param,
            )
        files.append(
            JobFile(
                param,
                file_id,
                file_row.storage_key,
                file_row.filename,
                status=file_row.status,
                format=file_row.format,
                bytes=file_row.bytes,
            )
        )
    return files


def check_files_again(
    store: ArtifactStore,
    task: str,
    files: list[JobFile],
    method: str = task_plugins.SUPERVISED,
    settings: Settings | None = None,
) -> None:
    """The job's files, validated again as the job starts (no session held: the store may be
    remote); raises the Failure to fail the job with.

    An upload was checked when it arrived; this catches a stored copy that changed, and
    rules added to the validator after the upload. An image or audio archive that passed at
    upload is not decoded again (that took most of a short audio job's start-up): its stored
    size must still be the upload's, and its zip directory must pass today's hostile-archive
    checks; the trainer reads its examples from that directory again anyway.
    """
    plugin = task_plugins.get(task)
    for file in files:
        what = f"{file.param} {file.file_id} ({file.filename})"
        try:
            path = store.local_file(file.storage_key)
            kind = file_kind_named(file.format) if file.status == "processed" else None
            if kind is not None and path.stat().st_size == file.bytes:
                kind.recheck(path, settings)
                _check_format(plugin, method, task, file.format, what, file.param)
                continue
            report = inspect_file(path, file.filename, settings=settings)
        except OSError as exc:
            raise Failure(
                "file_unreadable",
                f"{what} cannot be read from the artifact store: {exc}. Upload it again and "
                "create a new job.",
                file.param,
            ) from exc
        except UploadRefused as exc:  # an archive the upload's rules now refuse
            raise Failure(
                "invalid_file",
                f"{what} was refused when the job started: {exc}. Fix the archive, upload it "
                "again and create a new job.",
                file.param,
            ) from exc
        if not report.ok:
            raise Failure(
                "invalid_file",
                f"{what} failed validation when the job started: {report.status_details} Fix "
                "the file, upload it again and create a new job.",
                file.param,
            )
        _check_format(plugin, method, task, report.format, what, file.param)


def _check_format(
    plugin: task_plugins.TaskPlugin,
    method: str,
    task: str,
    found: str | None,
    what: str,
    param: str,
) -> None:
    if found not in plugin.formats_for(method):
        raise Failure(
            "invalid_file_format",
            f"{what} is in {found} format; a {method} {task} job needs "
            f"{_format_hint(task, method)}.",
            param,
        )


def get_checkpoint(
    session: Session, job_id: str, checkpoint_id: str, project_id: str
) -> JobCheckpointRow:
    get_job(session, job_id, project_id)
    row = repository.get_checkpoint(session, checkpoint_id)
    if row is None or row.job_id != job_id:
        raise not_found("checkpoint", checkpoint_id, param="fine_tuning_checkpoint_id")
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
        "result_step": row.result_step,
        "result_reason": row.result_reason,
        "n_validation": row.n_validation,
        "final": row.final_metrics,
    }
