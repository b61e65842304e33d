"""Evaluation rules: what can be scored on what, checked before anything is queued."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.orm import Session

import task_plugins
from app.evaluations import repository
from app.evaluations.schemas import EvaluationCreate
from app.failures import APIError, not_found
from app.files import repository as files_repo
from app.ids import new_id
from app.models.service import serving_spec
from app.tables import EvaluationRow


def create(
    session: Session, models_dir: Path, body: EvaluationCreate, project_id: str
) -> EvaluationRow:
    # the models and the file are looked up in the caller's project only
    spec = serving_spec(session, models_dir, body.model, param="model", project_id=project_id)
    task = str(spec["task"])
    if body.compare_to is not None:
        if body.compare_to == body.model:
            raise APIError(
                400,
                "compare_to names the model itself; give another model (its base, say) or "
                "leave compare_to out.",
                param="compare_to",
            )
        other = serving_spec(
            session, models_dir, body.compare_to, param="compare_to", project_id=project_id
        )
        if other["task"] != task:
            raise APIError(
                400,
                f"compare_to {body.compare_to} does {other['task']} but {body.model} does "
                f"{task}; compare models of the same task.",
                param="compare_to",
            )
    file = files_repo.get(session, body.file, project_id)
    if file is None:
        raise APIError(
            400,
            f"file '{body.file}' does not exist; upload it with POST /v1/files.",
            param="file",
            code="file_not_found",
        )
    if file.status != "processed":
        raise APIError(
            400,
            f"file '{body.file}' failed validation: {file.status_details}. Fix the file and "
            "upload it again.",
            param="file",
            code="invalid_file",
        )
    plugin = task_plugins.get(task)
    if file.format not in plugin.formats_for(task_plugins.SUPERVISED):
        raise APIError(
            400,
            f"file '{body.file}' is in {file.format} format, but {body.model} does {task}, "
            f"which is scored on {plugin.format_hint}.",
            param="file",
            code="invalid_file_format",
        )
    row = EvaluationRow(
        id=new_id("eval"),
        project_id=project_id,
        model=body.model,
        compare_to=body.compare_to,
        file_id=file.id,
        task=task,
        status="queued",
        attempt=0,
        enqueued_at=time.time(),
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, evaluation_id: str, project_id: str) -> EvaluationRow:
    row = repository.get(session, evaluation_id, project_id)
    if row is None:
        raise not_found("evaluation", evaluation_id, param="evaluation_id")
    return row
