"""Models: base models from the registry, fine-tuned models from the database.

Base models are visible to every project; a fine-tuned model or a checkpoint only to the
project of the job that made it. `project_id=None` looks in every project: only for workers,
which act on what a request already scoped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import task_plugins
from app.failures import APIError, not_found
from app.models.registry import BaseModel, list_base_models, resolve_base_model
from app.tables import DeploymentRow, FineTunedModelRow, JobCheckpointRow, JobRow


def predicts(task: str) -> dict[str, Any] | None:
    """What the model's predict takes, from its task's predictor hook: the kinds of input
    ("text", "chat", "image", "audio"), the request parameters, and whether it streams. A
    client (the dashboard's playground) builds its form from this instead of knowing tasks.
    None for a task this build does not run."""
    try:
        hook = task_plugins.get(task).predictor
    except task_plugins.UnknownTask:
        return None
    return {
        "inputs": sorted(hook.inputs),
        "parameters": sorted(hook.parameters),
        "streams": hook.streams,
    }


def base_public(model: BaseModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created_at,
        "owned_by": "tunery",
        "task": model.task,
        "predicts": predicts(model.task),
        "kind": "base",
        # the Hub commit it was pulled at (POST /v1/models/pull); None for a folder put in
        # TUNERY_MODELS_DIR by hand
        "sha": model.sha,
    }


def tuned_public(row: FineTunedModelRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "model",
        "created": row.created_at,
        "owned_by": "user",
        "task": row.task,
        "predicts": predicts(row.task),
        "kind": "fine-tuned",
        "base_model": row.base_model,
        "job_id": row.job_id,
        "training_type": row.training_type,
        "format": row.format,
    }


def list_models(session: Session, models_dir: Path, project_id: str) -> list[dict[str, Any]]:
    tuned = session.scalars(
        select(FineTunedModelRow)
        .where(FineTunedModelRow.project_id == project_id, FineTunedModelRow.deleted.is_(False))
        .order_by(FineTunedModelRow.created_at.desc())
    )
    return [base_public(m) for m in list_base_models(models_dir)] + [tuned_public(r) for r in tuned]


def get_tuned(
    session: Session, model_id: str, project_id: str | None = None
) -> FineTunedModelRow | None:
    row = session.get(FineTunedModelRow, model_id)
    if row is None or row.deleted:
        return None
    return None if project_id is not None and row.project_id != project_id else row


def get_checkpoint(
    session: Session, model_id: str, project_id: str | None = None
) -> tuple[JobCheckpointRow, JobRow] | None:
    """A job checkpoint by its model name (ft:...:ckpt-step-N), with its job."""
    if ":ckpt-step-" not in model_id:
        return None
    row = session.scalar(select(JobCheckpointRow).where(JobCheckpointRow.model_name == model_id))
    job = session.get(JobRow, row.job_id) if row is not None else None
    if job is not None and project_id is not None and job.project_id != project_id:
        return None
    return (row, job) if row is not None and job is not None else None


def checkpoint_public(row: JobCheckpointRow, job: JobRow) -> dict[str, Any]:
    training_type = str(job.training_type.get("type"))
    return {
        "id": row.model_name,
        "object": "model",
        "created": row.created_at,
        "owned_by": "user",
        "task": job.task,
        "predicts": predicts(job.task),
        "kind": "checkpoint",
        "base_model": job.model,
        "job_id": job.id,
        "checkpoint_id": row.id,
        "step_number": row.step,
        "training_type": training_type,
        "format": "adapter" if training_type in ("lora", "qlora") else "full",
    }


def get_model(session: Session, models_dir: Path, model_id: str, project_id: str) -> dict[str, Any]:
    tuned = get_tuned(session, model_id, project_id)
    if tuned is not None:
        return tuned_public(tuned)
    checkpoint = get_checkpoint(session, model_id, project_id)
    if checkpoint is not None:
        return checkpoint_public(*checkpoint)
    base = resolve_base_model(models_dir, model_id)
    if base is not None:
        return base_public(base)
    raise not_found("model", model_id, param="model")


def serving_spec(
    session: Session,
    models_dir: Path,
    model_id: str,
    param: str = "model",
    project_id: str | None = None,
) -> dict[str, Any]:
    """The model spec the inference server loads (docs/internals.md).

    A request passes its project: another project's fine-tuned model reads as missing.
    """
    tuned = get_tuned(session, model_id, project_id)
    checkpoint = get_checkpoint(session, model_id, project_id) if tuned is None else None
    if tuned is not None or checkpoint is not None:
        if tuned is not None:
            base_id, task, artifact = tuned.base_model, tuned.task, tuned.artifact_key
        else:
            assert checkpoint is not None
            row, job = checkpoint
            base_id, task, artifact = job.model, job.task, row.artifact_key
        base = resolve_base_model(models_dir, base_id)
        if base is None:
            raise APIError(
                409,
                f"Model {model_id} was tuned from {base_id}, which is no longer in "
                "TUNERY_MODELS_DIR; put the base model back to serve it.",
                param=param,
                code="base_model_missing",
            )
        return {
            "key": model_id,
            "task": task,
            "base_model_dir": str(base.path),
            "artifact": artifact,
        }
    base = resolve_base_model(models_dir, model_id)
    if base is not None:
        return {
            "key": base.id,
            "task": base.task,
            "base_model_dir": str(base.path),
            "artifact": None,
        }
    if "/" in model_id and not model_id.startswith("ft:"):  # a Hub id, maybe
        raise APIError(
            404,
            f"No model with id '{model_id}'. To serve a base model from the Hugging Face Hub, "
            f"run `tunery models pull {model_id}` (an admin key; POST /v1/models/pull) first.",
            param=param,
            code="not_found",
        )
    raise not_found("model", model_id, param=param)


def delete_tuned(
    session: Session, model_id: str, project_id: str, models_dir: Path | None = None
) -> FineTunedModelRow:
    row = get_tuned(session, model_id, project_id)
    if row is None:
        if models_dir is not None and resolve_base_model(models_dir, model_id) is not None:
            raise APIError(
                400,
                f"{model_id} is a base model that was not pulled from the Hub; remove its "
                "folder from TUNERY_MODELS_DIR instead.",
                param="model",
                code="not_deletable",
            )
        raise not_found("model", model_id, param="model")
    live = session.scalars(
        select(DeploymentRow.id).where(
            DeploymentRow.model == model_id, DeploymentRow.deleted.is_(False)
        )
    ).all()
    if live:
        raise APIError(
            409,
            f"Model {model_id} is deployed as {', '.join(live)}; delete those deployments first.",
            param="model",
            code="model_in_use",
        )
    row.deleted = True
    session.flush()
    return row
