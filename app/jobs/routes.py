from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.deps import SessionDep, SettingsDep
from app.jobs import repository, service
from app.jobs.schemas import JobCreate, JobPublic
from app.pagination import check_limit, page

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
log = logging.getLogger(__name__)


@router.post("", response_model=JobPublic)
def create_job(
    request: Request, session: SessionDep, settings: SettingsDep, body: JobCreate
) -> JobPublic:
    assert settings.models_dir is not None
    row = service.create_job(session, settings.models_dir, body)
    session.commit()  # enqueue only what is committed
    try:
        request.app.state.enqueue(row.id)
    except Exception:
        log.exception("could not enqueue %s; the reconciler will retry", row.id)
    return JobPublic.of(row)


@router.get("")
def list_jobs(
    session: SessionDep, after: str | None = None, limit: Annotated[int, Query()] = 20
) -> dict[str, Any]:
    rows = repository.list_page(session, after=after, limit=check_limit(limit))
    return page([JobPublic.of(r).model_dump() for r in rows], limit)


@router.get("/{job_id}", response_model=JobPublic)
def retrieve_job(session: SessionDep, job_id: str) -> JobPublic:
    return JobPublic.of(service.get_job(session, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(session: SessionDep, job_id: str) -> JobPublic:
    return JobPublic.of(service.cancel_job(session, job_id))


@router.get("/{job_id}/events")
def list_events(
    session: SessionDep, job_id: str, after: str | None = None, limit: Annotated[int, Query()] = 20
) -> dict[str, Any]:
    service.get_job(session, job_id)
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
def job_metrics(session: SessionDep, job_id: str) -> dict[str, Any]:
    return service.metrics_of(session, service.get_job(session, job_id))
