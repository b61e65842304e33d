"""Pulling base models from the Hugging Face Hub (app/hub/service.py). Included before the
models router, whose GET /v1/models/{model_id:path} would otherwise take /pulls/{id}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import PrincipalDep, SessionDep, SessionmakerDep, SettingsDep
from app.failures import APIError
from app.hub import pull, service
from app.hub.schemas import PullCreate

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post("/pull", status_code=202)
def pull_model(
    principal: PrincipalDep,
    session: SessionDep,
    make_session: SessionmakerDep,
    settings: SettingsDep,
    body: PullCreate,
) -> dict[str, Any]:
    """Start pulling a base model (admin only); poll GET /v1/models/pulls/{id}."""
    service.check_admin(session, principal, settings.admin_project)
    running = service.running_pull(session, body.model)
    if running is not None and running.revision == body.revision:
        return service.pull_public(running)
    if running is not None:
        raise APIError(
            409,
            f"{body.model} is being pulled at revision '{running.revision}' ({running.id}); "
            "wait for that pull to end, then pull this revision.",
            param="revision",
            code="pull_running",
        )
    session.commit()  # the Hub is asked with no transaction open
    found = pull.plan(settings.models_dir, body.model, body.revision)
    service.check_replaceable(session, settings.models_dir, found)
    row = service.record(session, found)
    session.commit()
    service.start(make_session, settings.models_dir, row.id, found)
    return service.pull_public(row)


@router.get("/pulls")
def list_pulls(principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    rows = service.recent_pulls(session)
    return {"object": "list", "data": [service.pull_public(r) for r in rows]}


@router.get("/pulls/{pull_id}")
def retrieve_pull(principal: PrincipalDep, session: SessionDep, pull_id: str) -> dict[str, Any]:
    return service.pull_public(service.get_pull(session, pull_id))
