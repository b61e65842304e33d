"""Models: base models from the registry, fine-tuned models from the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import APIError, not_found
from app.models.registry import BaseModel, list_base_models, resolve_base_model
from app.tables import DeploymentRow, FineTunedModelRow


def base_public(model: BaseModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created_at,
        "owned_by": "tunery",
        "task": model.task,
        "kind": "base",
    }


def tuned_public(row: FineTunedModelRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "model",
        "created": row.created_at,
        "owned_by": "user",
        "task": row.task,
        "kind": "fine-tuned",
        "base_model": row.base_model,
        "job_id": row.job_id,
        "training_type": row.training_type,
        "format": row.format,
    }


def list_models(session: Session, models_dir: Path) -> list[dict[str, Any]]:
    tuned = session.scalars(
        select(FineTunedModelRow)
        .where(FineTunedModelRow.deleted.is_(False))
        .order_by(FineTunedModelRow.created_at.desc())
    )
    return [base_public(m) for m in list_base_models(models_dir)] + [tuned_public(r) for r in tuned]


def get_tuned(session: Session, model_id: str) -> FineTunedModelRow | None:
    row = session.get(FineTunedModelRow, model_id)
    return None if row is None or row.deleted else row


def get_model(session: Session, models_dir: Path, model_id: str) -> dict[str, Any]:
    tuned = get_tuned(session, model_id)
    if tuned is not None:
        return tuned_public(tuned)
    base = resolve_base_model(models_dir, model_id)
    if base is not None:
        return base_public(base)
    raise not_found("model", model_id, param="model")


def serving_spec(
    session: Session, models_dir: Path, model_id: str, param: str = "model"
) -> dict[str, Any]:
    """The model spec the inference server loads (docs/internals.md)."""
    tuned = get_tuned(session, model_id)
    if tuned is not None:
        base = resolve_base_model(models_dir, tuned.base_model)
        if base is None:
            raise APIError(
                409,
                f"Model {model_id} was tuned from {tuned.base_model}, which is no longer in "
                "TUNERY_MODELS_DIR; put the base model back to serve it.",
                param=param,
                code="base_model_missing",
            )
        return {
            "key": tuned.id,
            "task": tuned.task,
            "base_model_dir": str(base.path),
            "artifact": tuned.artifact_key,
        }
    base = resolve_base_model(models_dir, model_id)
    if base is not None:
        return {
            "key": base.id,
            "task": base.task,
            "base_model_dir": str(base.path),
            "artifact": None,
        }
    raise not_found("model", model_id, param=param)


def delete_tuned(session: Session, model_id: str) -> FineTunedModelRow:
    row = get_tuned(session, model_id)
    if row is None:
        if session.get(FineTunedModelRow, model_id) is None and not model_id.startswith("ft:"):
            raise APIError(
                400,
                f"{model_id} is a base model; only fine-tuned models can be deleted.",
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
