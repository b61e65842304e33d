from __future__ import annotations

import re
from typing import Any, Literal

import anyio
from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import FileResponse

from app.deployments.service import unload
from app.deps import InferenceDep, PrincipalDep, ServingDep, SessionDep, SettingsDep, StoreDep
from app.errors import download_response
from app.failures import APIError, not_found
from app.hub import pull
from app.hub import service as hub_service
from app.models import service
from app.models.export import card_for, tarball
from app.models.registry import resolve_base_model

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(
    principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    data = service.list_models(session, settings.models_dir, principal.project_id)
    return {"object": "list", "data": data}


@router.get("/{model_id:path}/content", responses=download_response("application/gzip"))
def download_model(
    inference: InferenceDep,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    background: BackgroundTasks,
    model_id: str,
    format: Literal["adapter", "merged"] = "adapter",
) -> FileResponse:
    # the session's reads are committed (the transaction ended) before the inference
    # server merges and before the store is read: neither waits holding a transaction
    tuned = service.get_tuned(session, model_id, principal.project_id)
    if tuned is None:
        raise not_found("fine-tuned model", model_id, param="model")
    spec: dict[str, Any] | None = None
    if format == "adapter":
        if tuned.format != "adapter":
            raise APIError(
                400,
                f"{model_id} was trained with training_type {tuned.training_type}, so it has no "
                "adapter; download it with format=merged.",
                param="format",
            )
        key = tuned.artifact_key
    elif tuned.format == "full":
        key = tuned.artifact_key
    else:
        spec = service.serving_spec(
            session, settings.models_dir, model_id, project_id=principal.project_id
        )
    top = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{tuned.job_id}-{format}")
    readme = card_for(session, tuned, format, settings.models_dir)
    session.commit()
    if spec is not None:
        key = anyio.from_thread.run(inference.export_merged, spec)["artifact"]
    path = tarball(store, key, top, settings.cache_dir / "exports", readme=readme)
    background.add_task(path.unlink, missing_ok=True)
    return FileResponse(path, media_type="application/gzip", filename=f"{top}.tar.gz")


@router.get("/{model_id:path}")
def retrieve_model(
    principal: PrincipalDep, session: SessionDep, settings: SettingsDep, model_id: str
) -> dict[str, Any]:
    return service.get_model(session, settings.models_dir, model_id, principal.project_id)


@router.delete("/{model_id:path}")
def delete_model(
    inference: InferenceDep,
    serving: ServingDep,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    model_id: str,
) -> dict[str, Any]:
    if service.get_tuned(session, model_id, principal.project_id) is None:
        base = resolve_base_model(settings.models_dir, model_id)
        if base is not None and base.sha is not None:  # pulled from the Hub: removable
            hub_service.check_admin(session, principal, settings.admin_project)
            hub_service.check_unused(session, model_id)
            session.commit()
            anyio.from_thread.run(unload, inference, model_id)
            pull.remove(settings.models_dir, model_id)
            return {"id": model_id, "object": "model", "deleted": True}
    row = service.delete_tuned(session, model_id, principal.project_id, settings.models_dir)
    session.commit()
    anyio.from_thread.run_sync(serving.lookup.forget_model, row.id)
    anyio.from_thread.run(unload, inference, row.id)
    store.delete(row.artifact_key.rsplit("/", 1)[0] + "/merged")
    store.delete(row.artifact_key)
    return {"id": model_id, "object": "model", "deleted": True}
