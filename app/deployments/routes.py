from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request

from app.deployments import service
from app.deployments.schemas import DeploymentCreate, DeploymentPublic, PredictRequest
from app.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])


@router.post("", response_model=DeploymentPublic)
def create_deployment(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    body: DeploymentCreate,
) -> DeploymentPublic:
    assert settings.models_dir is not None
    row = service.create(session, settings.models_dir, body.model)
    session.commit()
    background.add_task(
        service.load_in_background,
        request.app.state.sessionmaker,
        request.app.state.inference,
        settings.models_dir,
        row.id,
    )
    return DeploymentPublic.of(row)


@router.get("")
def list_deployments(session: SessionDep) -> dict[str, Any]:
    rows = service.list_all(session)
    return {"object": "list", "data": [DeploymentPublic.of(r).model_dump() for r in rows]}


@router.get("/{dep_id}", response_model=DeploymentPublic)
def retrieve_deployment(session: SessionDep, dep_id: str) -> DeploymentPublic:
    return DeploymentPublic.of(service.get(session, dep_id))


@router.delete("/{dep_id}")
def delete_deployment(request: Request, session: SessionDep, dep_id: str) -> dict[str, Any]:
    service.delete(session, request.app.state.inference, dep_id)
    return {"id": dep_id, "object": "deployment", "deleted": True}


@router.post("/{dep_id}/predict")
def predict(
    request: Request, session: SessionDep, settings: SettingsDep, dep_id: str, body: PredictRequest
) -> dict[str, Any]:
    assert settings.models_dir is not None
    return service.predict(
        session,
        request.app.state.inference,
        settings.models_dir,
        dep_id,
        body.inputs,
        body.parameters,
    )
