from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import StreamingResponse

from app.deployments import service
from app.deployments.schemas import (
    DeploymentCreate,
    DeploymentPublic,
    ModelPredictRequest,
    PredictRequest,
)
from app.deps import PrincipalDep, SessionDep, SettingsDep
from app.errors import stream_response

router = APIRouter(prefix="/v1", tags=["deployments"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/deployments", response_model=DeploymentPublic)
def create_deployment(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    body: DeploymentCreate,
) -> DeploymentPublic:
    assert settings.models_dir is not None
    row = service.create(session, settings.models_dir, body.model, principal.project_id)
    session.commit()
    background.add_task(
        service.load_in_background,
        request.app.state.sessionmaker,
        request.app.state.inference,
        settings.models_dir,
        row.id,
    )
    return DeploymentPublic.of(row)


@router.get("/deployments")
def list_deployments(principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    rows = service.list_all(session, principal.project_id)
    return {"object": "list", "data": [DeploymentPublic.of(r).model_dump() for r in rows]}


@router.get("/deployments/{dep_id}", response_model=DeploymentPublic)
def retrieve_deployment(
    principal: PrincipalDep, session: SessionDep, dep_id: str
) -> DeploymentPublic:
    return DeploymentPublic.of(service.get(session, dep_id, principal.project_id))


@router.delete("/deployments/{dep_id}")
def delete_deployment(
    request: Request, principal: PrincipalDep, session: SessionDep, dep_id: str
) -> dict[str, Any]:
    service.delete(session, request.app.state.inference, dep_id, principal.project_id)
    return {"id": dep_id, "object": "deployment", "deleted": True}


@router.post("/deployments/{dep_id}/predict", response_model=None, responses=stream_response())
def predict(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    dep_id: str,
    body: PredictRequest,
) -> dict[str, Any] | StreamingResponse:
    assert settings.models_dir is not None
    args = (session, request.app.state.inference, settings.models_dir)
    if body.stream:
        stream = service.open_stream(
            *args, dep_id, body.inputs, body.parameters, principal.project_id
        )
        session.commit()  # the request count; the stream outlives the request's session
        return _event_stream(stream)
    return service.predict(*args, dep_id, body.inputs, body.parameters, principal.project_id)


@router.post("/predict", response_model=None, responses=stream_response())
def predict_model(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    body: ModelPredictRequest,
) -> dict[str, Any] | StreamingResponse:
    """Any base or fine-tuned model, loaded just in time; a deployment keeps one warm."""
    assert settings.models_dir is not None
    args = (session, request.app.state.inference, settings.models_dir)
    if body.stream:
        return _event_stream(
            service.open_model_stream(
                *args, body.model, body.inputs, body.parameters, principal.project_id
            )
        )
    return service.predict_model(
        *args, body.model, body.inputs, body.parameters, principal.project_id
    )


def _event_stream(stream: Any) -> StreamingResponse:
    return StreamingResponse(
        service.sse_lines(stream), media_type="text/event-stream", headers=SSE_HEADERS
    )
