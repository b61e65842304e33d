from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.responses import FileResponse

from app.deps import EnqueueJobDep, PrincipalDep, ReadsDep, SessionDep, SettingsDep, StoreDep
from app.errors import download_response
from app.failures import not_found
from app.hub.pull import auto_pulled, pending_base, plan
from app.jobs import repository, service
from app.jobs.listing import list_page_matching, metadata_filter
from app.jobs.schemas import CheckpointPublic, JobCreate, JobPublic
from app.models.export import tarball
from app.pagination import check_limit, page

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


@router.post("", response_model=JobPublic)
def create_job(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueJobDep,
    body: JobCreate,
) -> JobPublic:
    pending = None
    if settings.hub_auto_pull and auto_pulled(settings.models_dir, body.model):
        # before the session's first query: no transaction waits on the Hub
        pending = pending_base(settings.models_dir, plan(settings.models_dir, body.model))
    row = service.create_job(
        session,
        settings.models_dir,
        body,
        project_id=principal.project_id,
        max_unfinished=settings.quota_concurrent_jobs,
        pending=pending,
    )
    session.commit()  # enqueue only what is committed
    enqueue(row.id)
    return JobPublic.of(row)


@router.get("")
def list_jobs(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> dict[str, Any]:
    # OpenAI's metadata[key]=value filter (the SDK's jobs.list(metadata={...}))
    metadata = metadata_filter(request.query_params.multi_items())
    if metadata:
        rows = list_page_matching(
            session,
            project_id=principal.project_id,
            after=after,
            limit=check_limit(limit),
            metadata=metadata,
        )
    else:
        rows = repository.list_page(
            session, project_id=principal.project_id, after=after, limit=check_limit(limit)
        )
    return page([JobPublic.of(r).model_dump() for r in rows], limit)


@router.get("/{job_id}", response_model=JobPublic)
async def retrieve_job(principal: PrincipalDep, reads: ReadsDep, job_id: str) -> JobPublic:
    """The status every client polls: one query scoped to the caller's project, on the hot
    read path (app/reads.py) rather than through a session in a thread."""
    row = await reads.job(job_id, principal.project_id)
    if row is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return JobPublic.of(row)


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(principal: PrincipalDep, session: SessionDep, job_id: str) -> JobPublic:
    return JobPublic.of(service.cancel_job(session, job_id, principal.project_id))


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(principal: PrincipalDep, session: SessionDep, job_id: str) -> JobPublic:
    return JobPublic.of(service.pause_job(session, job_id, principal.project_id))


@router.post("/{job_id}/resume", response_model=JobPublic)
def resume_job(
    principal: PrincipalDep, session: SessionDep, enqueue: EnqueueJobDep, job_id: str
) -> JobPublic:
    row = service.resume_job(session, job_id, principal.project_id)
    session.commit()  # enqueue only what is committed
    enqueue(row.id)
    return JobPublic.of(row)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    principal: PrincipalDep,
    session: SessionDep,
    job_id: str,
    after: str | None = None,
    limit: Annotated[int, Query()] = 10,
) -> dict[str, Any]:
    service.get_job(session, job_id, principal.project_id)
    rows = repository.list_checkpoints(session, job_id, after=after, limit=check_limit(limit))
    return page([CheckpointPublic.of(r).model_dump() for r in rows], limit)


@router.get(
    "/{job_id}/checkpoints/{checkpoint_id}/content",
    responses=download_response("application/gzip"),
)
def download_checkpoint(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    background: BackgroundTasks,
    job_id: str,
    checkpoint_id: str,
) -> FileResponse:
    """The checkpoint's model as a tar.gz (adapter or whole model, tokenizer, tunery.json)."""
    row = service.get_checkpoint(session, job_id, checkpoint_id, principal.project_id)
    top = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{job_id}-step-{row.step}")
    path = tarball(store, row.artifact_key, top, settings.cache_dir / "exports")
    background.add_task(path.unlink, missing_ok=True)
    return FileResponse(path, media_type="application/gzip", filename=f"{top}.tar.gz")


@router.get("/{job_id}/events")
def list_events(
    principal: PrincipalDep,
    session: SessionDep,
    job_id: str,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> dict[str, Any]:
    service.get_job(session, job_id, principal.project_id)
    rows = repository.list_events(session, job_id, after=after, limit=check_limit(limit))
    items = [
        {
            "id": e.id,
            "object": "fine_tuning.job.event",
            "created_at": e.created_at,
            "level": e.level,
            "message": e.message,
            "type": e.type,
            "data": e.data,
        }
        for e in rows
    ]
    return page(items, limit)


@router.get("/{job_id}/metrics")
def job_metrics(principal: PrincipalDep, session: SessionDep, job_id: str) -> dict[str, Any]:
    return service.metrics_of(session, service.get_job(session, job_id, principal.project_id))
