"""Deployments keep a model warm on the inference server; predict goes through them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.errors import APIError, not_found
from app.ids import new_id
from app.inference_client import InferenceClient
from app.models.service import serving_spec
from app.tables import DeploymentRow

log = logging.getLogger(__name__)


def create(session: Session, models_dir: Path, model_id: str) -> DeploymentRow:
    serving_spec(session, models_dir, model_id)  # 404/409 now rather than a failed deployment
    row = DeploymentRow(id=new_id("dep"), model=model_id, status="loading", requests_served=0)
    session.add(row)
    session.flush()
    return row


def load_in_background(
    make_session: sessionmaker[Session], client: InferenceClient, models_dir: Path, dep_id: str
) -> None:
    """Runs after the response: ask the inference server to load, record the outcome."""
    with make_session() as session:
        row = session.get(DeploymentRow, dep_id)
        if row is None or row.deleted:
            return
        try:
            spec = serving_spec(session, models_dir, row.model)
            result = client.load(spec, pin=True)
        except APIError as exc:
            row.status = "failed"
            row.error = {"code": exc.code or "load_failed", "message": exc.message}
        except Exception as exc:
            log.exception("deployment %s failed to load", dep_id)
            row.status = "failed"
            row.error = {"code": "load_failed", "message": str(exc)}
        else:
            row.status = "ready"
            row.error = None
            row.load_seconds = float(result.get("load_seconds", 0.0))
            row.memory_bytes = int(result.get("memory_bytes", 0))
        session.commit()


def get(session: Session, dep_id: str) -> DeploymentRow:
    row = session.get(DeploymentRow, dep_id)
    if row is None or row.deleted:
        raise not_found("deployment", dep_id, param="deployment_id")
    return row


def list_all(session: Session) -> list[DeploymentRow]:
    query = select(DeploymentRow).where(DeploymentRow.deleted.is_(False))
    return list(session.scalars(query.order_by(DeploymentRow.created_at.desc())))


def predict(
    session: Session,
    client: InferenceClient,
    models_dir: Path,
    dep_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    row = get(session, dep_id)
    if row.status == "loading":
        raise APIError(
            409,
            f"Deployment {dep_id} is still loading; retry in a few seconds.",
            code="deployment_loading",
            headers={"Retry-After": "2"},
        )
    if row.status == "failed":
        message = (row.error or {}).get("message", "unknown error")
        raise APIError(
            409,
            f"Deployment {dep_id} failed to load: {message}. Delete it and deploy again.",
            code="deployment_failed",
        )
    spec = serving_spec(session, models_dir, row.model)
    # the server loads the model again if it restarted since the deployment was made
    result = client.predict(spec, inputs, parameters)
    session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == dep_id)
        .values(requests_served=DeploymentRow.requests_served + 1)
    )
    return {"object": "prediction", "model": row.model, "deployment": dep_id, **result}


def delete(session: Session, client: InferenceClient, dep_id: str) -> DeploymentRow:
    row = get(session, dep_id)
    row.deleted = True
    session.flush()
    still_deployed = session.scalar(
        select(DeploymentRow.id).where(
            DeploymentRow.model == row.model, DeploymentRow.deleted.is_(False)
        )
    )
    if still_deployed is None:
        # not loaded, or the server is down: nothing to free either way
        with contextlib.suppress(APIError):
            client.unload(row.model)
    return row
