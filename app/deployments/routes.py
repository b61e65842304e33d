"""Deployments and predict. The serving routes run on the event loop and never hold a
database session while the inference server works (service.py says how)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import JSONResponse

from app.deployments import repository, service
from app.deployments.schemas import (
    DeploymentCreate,
    DeploymentPublic,
    ModelPredictRequest,
    PredictRequest,
    ProjectUsage,
)
from app.deployments.sse import EventStream
from app.deps import InferenceDep, PrincipalDep, ServingDep, SessionDep, SettingsDep
from app.errors import stream_response
from app.hub import service as hub_service
from app.hub.deployments import load_after_pull
from app.hub.pull import auto_pulled, plan

router = APIRouter(prefix="/v1", tags=["deployments"])


@router.post("/deployments", response_model=DeploymentPublic)
def create_deployment(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    serving: ServingDep,
    inference: InferenceDep,
    background: BackgroundTasks,
    body: DeploymentCreate,
) -> DeploymentPublic:
    if settings.hub_auto_pull and auto_pulled(settings.models_dir, body.model):
        # a Hub model not pulled yet: asked before the session's first query, pulled by the
        # API, loaded once it is in place (app/hub/deployments.py)
        found = plan(settings.models_dir, body.model)
        pull_id = hub_service.pull_in_background(serving.make_session, settings.models_dir, found)
        row = repository.add(session, body.model, principal.project_id)
        session.commit()
        background.add_task(
            load_after_pull, serving, inference, pull_id, row.id, row.model, principal.project_id
        )
        return DeploymentPublic.of(row)
    row = service.create(session, settings.models_dir, body.model, principal.project_id)
    session.commit()  # the load runs after the response, with no session open
    background.add_task(
        service.load_in_background, serving, inference, row.id, row.model, principal.project_id
    )
    return DeploymentPublic.of(row)


@router.get("/deployments")
async def list_deployments(principal: PrincipalDep, serving: ServingDep) -> dict[str, Any]:
    rows = await service.list_all(serving, principal.project_id)
    data = [DeploymentPublic.of(row, pending).model_dump() for row, pending in rows]
    return {"object": "list", "data": data}


@router.get("/deployments/{dep_id}", response_model=DeploymentPublic)
async def retrieve_deployment(
    principal: PrincipalDep, serving: ServingDep, dep_id: str
) -> DeploymentPublic:
    row, pending = await service.retrieve(serving, dep_id, principal.project_id)
    return DeploymentPublic.of(row, pending)


@router.delete("/deployments/{dep_id}")
async def delete_deployment(
    principal: PrincipalDep, serving: ServingDep, inference: InferenceDep, dep_id: str
) -> dict[str, Any]:
    def delete() -> tuple[str, bool]:
        with serving.make_session() as session:
            deleted = service.mark_deleted(session, dep_id, principal.project_id)
            session.commit()
            return deleted

    model, still_deployed = await anyio.to_thread.run_sync(delete)
    serving.lookup.forget_deployment(dep_id)  # stops answering in this process at once
    if not still_deployed:
        await service.unload(inference, model)
    return {"id": dep_id, "object": "deployment", "deleted": True}


@router.post("/deployments/{dep_id}/predict", response_model=None, responses=stream_response())
async def predict(
    principal: PrincipalDep,
    serving: ServingDep,
    inference: InferenceDep,
    dep_id: str,
    body: PredictRequest,
) -> JSONResponse | EventStream:
    args = (serving, inference, dep_id, body.inputs, body.parameters, principal.project_id)
    if body.stream:
        lines, slot = await service.open_stream(*args)
        return EventStream(lines, on_close=slot.release)
    # already plain JSON types: skipping FastAPI's encoder saves ~0.2 ms a request
    return JSONResponse(await service.predict(*args))


@router.post("/predict", response_model=None, responses=stream_response())
async def predict_model(
    principal: PrincipalDep, serving: ServingDep, inference: InferenceDep, body: ModelPredictRequest
) -> JSONResponse | EventStream:
    """Any base or fine-tuned model, loaded just in time; a deployment keeps one warm."""
    args = (serving, inference, body.model, body.inputs, body.parameters, principal.project_id)
    if body.stream:
        lines, slot = await service.open_model_stream(*args)
        return EventStream(lines, on_close=slot.release)
    return JSONResponse(await service.predict_model(*args))


@router.get("/usage", response_model=ProjectUsage, tags=["usage"])
async def project_usage(principal: PrincipalDep, serving: ServingDep) -> ProjectUsage:
    """Requests and tokens served to the calling project so far (exact in this process,
    other API processes' counts within TUNERY_USAGE_FLUSH_SECONDS)."""
    usage = await service.project_usage(serving, principal.project_id)
    return ProjectUsage(
        project_id=principal.project_id,
        requests_served=usage.requests,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )
