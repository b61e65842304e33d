from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.deps import EnqueueJobDep, PrincipalDep, SessionDep, SettingsDep
from app.pagination import check_limit, page
from app.sweeps import repository, service
from app.sweeps.schemas import SweepCreate, SweepPublic

router = APIRouter(prefix="/v1/fine_tuning/sweeps", tags=["sweeps"])


@router.post("", response_model=SweepPublic)
def create_sweep(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueJobDep,
    body: SweepCreate,
) -> SweepPublic:
    row = service.create_sweep(session, settings, body, project_id=principal.project_id)
    started = service.advance(session, settings, row)
    row.driven_until = None
    session.commit()  # enqueue only what is committed
    for job_id in started:
        enqueue(job_id)
    return SweepPublic.of(row, repository.trials(session, row.id))


@router.get("")
def list_sweeps(
    principal: PrincipalDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> dict[str, Any]:
    rows = repository.list_page(
        session, project_id=principal.project_id, after=after, limit=check_limit(limit)
    )
    trials = repository.trials_of(session, [r.id for r in rows])
    return page([SweepPublic.of(r, trials[r.id]).model_dump() for r in rows], limit)


@router.get("/{sweep_id}", response_model=SweepPublic)
def retrieve_sweep(principal: PrincipalDep, session: SessionDep, sweep_id: str) -> SweepPublic:
    row = service.get_sweep(session, sweep_id, principal.project_id)
    return SweepPublic.of(row, repository.trials(session, sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepPublic)
def cancel_sweep(
    principal: PrincipalDep, session: SessionDep, settings: SettingsDep, sweep_id: str
) -> SweepPublic:
    row = service.cancel_sweep(session, settings, sweep_id, principal.project_id)
    return SweepPublic.of(row, repository.trials(session, sweep_id))


@router.get("/{sweep_id}/events")
def list_events(
    principal: PrincipalDep,
    session: SessionDep,
    sweep_id: str,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> dict[str, Any]:
    service.get_sweep(session, sweep_id, principal.project_id)
    rows = repository.list_events(session, sweep_id, after=after, limit=check_limit(limit))
    items = [
        {
            "id": e.id,
            "object": "fine_tuning.sweep.event",
            "created_at": e.created_at,
            "level": e.level,
            "message": e.message,
            "data": e.data,
        }
        for e in rows
    ]
    return page(items, limit)
