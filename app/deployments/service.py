"""Deployments keep a model warm on the inference server; predict goes through them.

Any model can also be called without a deployment (`predict_model`): the inference server
loads it just in time and may evict it later, where a deployment keeps it pinned.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.errors import APIError, error_body, not_found
from app.ids import new_id
from app.inference_client import InferenceClient, PredictStream
from app.models.service import serving_spec
from app.tables import DeploymentRow

log = logging.getLogger(__name__)

UNAVAILABLE = "inference_unavailable"


def create(session: Session, models_dir: Path, model_id: str, project_id: str) -> DeploymentRow:
    # 404/409 now rather than a failed deployment; another project's model reads as missing
    serving_spec(session, models_dir, model_id, project_id=project_id)
    row = DeploymentRow(
        id=new_id("dep"),
        project_id=project_id,
        model=model_id,
        status="loading",
        requests_served=0,
    )
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
            _load(session, client, models_dir, row)
        except APIError as exc:
            row.status = "failed"
            row.error = {"code": exc.code or "load_failed", "message": exc.message}
        except Exception as exc:
            log.exception("deployment %s failed to load", dep_id)
            row.status = "failed"
            row.error = {"code": "load_failed", "message": str(exc)}
        session.commit()


def _load(session: Session, client: InferenceClient, models_dir: Path, row: DeploymentRow) -> None:
    spec = serving_spec(session, models_dir, row.model)
    result = client.load(spec, pin=True)
    row.status = "ready"
    row.error = None
    row.load_seconds = float(result.get("load_seconds") or 0.0)
    row.memory_bytes = int(result.get("memory_bytes") or 0)
    base_bytes = result.get("base_memory_bytes")
    row.base_memory_bytes = int(base_bytes) if base_bytes is not None else None


def get(session: Session, dep_id: str, project_id: str) -> DeploymentRow:
    row = session.get(DeploymentRow, dep_id)
    if row is None or row.deleted or row.project_id != project_id:
        raise not_found("deployment", dep_id, param="deployment_id")
    return row


def list_all(session: Session, project_id: str) -> list[DeploymentRow]:
    query = select(DeploymentRow).where(
        DeploymentRow.project_id == project_id, DeploymentRow.deleted.is_(False)
    )
    return list(session.scalars(query.order_by(DeploymentRow.created_at.desc())))


def _servable(
    session: Session, client: InferenceClient, models_dir: Path, dep_id: str, project_id: str
) -> tuple[DeploymentRow, dict[str, Any]]:
    """The deployment and its model spec, once it can serve; counts the request."""
    row = get(session, dep_id, project_id)
    if row.status == "loading":
        raise APIError(
            409,
            f"Deployment {dep_id} is still loading; retry in a few seconds.",
            code="deployment_loading",
            headers={"Retry-After": "2"},
        )
    if row.status == "failed":
        if (row.error or {}).get("code") != UNAVAILABLE:
            message = (row.error or {}).get("message", "unknown error")
            raise APIError(
                409,
                f"Deployment {dep_id} failed to load: {message}. Delete it and deploy again.",
                code="deployment_failed",
            )
        # it failed only because the inference server was down: it may be back now
        _load(session, client, models_dir, row)
    spec = serving_spec(session, models_dir, row.model, project_id=project_id)
    session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == dep_id)
        .values(requests_served=DeploymentRow.requests_served + 1)
    )
    return row, spec


def predict(
    session: Session,
    client: InferenceClient,
    models_dir: Path,
    dep_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> dict[str, Any]:
    row, spec = _servable(session, client, models_dir, dep_id, project_id)
    # pin: a server that restarted since the deployment was made loads it again, pinned
    result = client.predict(spec, inputs, parameters, pin=True)
    return {"object": "prediction", "model": row.model, "deployment": dep_id, **result}


def open_stream(
    session: Session,
    client: InferenceClient,
    models_dir: Path,
    dep_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> PredictStream:
    row = get(session, dep_id, project_id)
    spec = serving_spec(session, models_dir, row.model, project_id=project_id)
    check_streamable(spec, inputs)
    row, spec = _servable(session, client, models_dir, dep_id, project_id)
    return client.stream_predict(spec, inputs[0], parameters, pin=True)


def predict_model(
    session: Session,
    client: InferenceClient,
    models_dir: Path,
    model_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> dict[str, Any]:
    spec = serving_spec(session, models_dir, model_id, project_id=project_id)
    result = client.predict(spec, inputs, parameters)
    return {"object": "prediction", "model": model_id, "deployment": None, **result}


def open_model_stream(
    session: Session,
    client: InferenceClient,
    models_dir: Path,
    model_id: str,
    inputs: list[Any],
    parameters: dict[str, Any],
    project_id: str,
) -> PredictStream:
    spec = serving_spec(session, models_dir, model_id, project_id=project_id)
    check_streamable(spec, inputs)
    return client.stream_predict(spec, inputs[0], parameters)


def check_streamable(spec: dict[str, Any], inputs: list[Any]) -> None:
    if spec["task"] != "causal-lm":
        raise APIError(
            400,
            f"stream applies to causal-lm models; {spec['key']} does {spec['task']}. "
            "Leave stream out to get its predictions.",
            param="stream",
            code="unsupported_parameter",
        )
    if len(inputs) != 1:
        raise APIError(
            400,
            f"stream takes exactly 1 input, got {len(inputs)}; send the others in requests "
            "of their own.",
            param="inputs",
            code="invalid_input",
        )


def sse_lines(stream: PredictStream) -> Iterator[str]:
    """The inference server's events as server-sent events (docs/internals.md): text
    deltas, the finish event, then [DONE]; a failure mid-stream becomes an error event."""
    try:
        for event in stream:
            yield f"data: {json.dumps(event)}\n\n"
    except APIError as exc:
        body = error_body(exc.status, exc.message, exc.param, exc.code)
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        stream.close()
    yield "data: [DONE]\n\n"


def delete(
    session: Session, client: InferenceClient, dep_id: str, project_id: str
) -> DeploymentRow:
    row = get(session, dep_id, project_id)
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
