from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.deps import EnqueueEvaluationDep, PrincipalDep, SessionDep, SettingsDep
from app.evaluations import repository, service
from app.evaluations.schemas import EvaluationCreate, EvaluationPublic
from app.pagination import check_limit, page

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])


@router.post("", response_model=EvaluationPublic)
def create_evaluation(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueEvaluationDep,
    body: EvaluationCreate,
) -> EvaluationPublic:
    row = service.create(session, settings.models_dir, body, principal.project_id)
    session.commit()  # enqueue only what is committed
    enqueue(row.id)
    return EvaluationPublic.of(row)


@router.get("")
def list_evaluations(
    principal: PrincipalDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> dict[str, Any]:
    rows = repository.list_page(
        session, project_id=principal.project_id, after=after, limit=check_limit(limit)
    )
    return page([EvaluationPublic.of(r).model_dump() for r in rows], limit)


@router.get("/{evaluation_id}", response_model=EvaluationPublic)
def retrieve_evaluation(
    principal: PrincipalDep, session: SessionDep, evaluation_id: str
) -> EvaluationPublic:
    return EvaluationPublic.of(service.get(session, evaluation_id, principal.project_id))
