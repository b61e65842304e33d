"""Every query on deployments that goes through a session (writes, and the rare reads that
are not on the serving path; those use app/reads.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.deployments.usage import Usage
from app.ids import new_id
from app.tables import DeploymentRow, ProjectRow


def add(session: Session, model_id: str, project_id: str) -> DeploymentRow:
    row = DeploymentRow(
        id=new_id("dep"),
        project_id=project_id,
        model=model_id,
        status="loading",
        requests_served=0,
        prompt_tokens=0,
        completion_tokens=0,
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, dep_id: str, project_id: str) -> DeploymentRow | None:
    row = session.get(DeploymentRow, dep_id)
    if row is None or row.deleted or row.project_id != project_id:
        return None
    return row


def others_serve(session: Session, model_id: str) -> bool:
    """Whether a deployment that is not deleted still serves model_id."""
    found = session.scalar(
        select(DeploymentRow.id).where(
            DeploymentRow.model == model_id, DeploymentRow.deleted.is_(False)
        )
    )
    return found is not None


def record_outcome(session: Session, dep_id: str, values: dict[str, Any]) -> bool:
    """Write a load's outcome unless the deployment was deleted meanwhile; whether it was
    written."""
    result = session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == dep_id, DeploymentRow.deleted.is_(False))
        .values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


def add_usage(session: Session, deltas: dict[str, Usage]) -> None:
    # in id order: two API processes flushing at once lock the rows in the same order
    for dep_id in sorted(deltas):
        usage = deltas[dep_id]
        session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id == dep_id)
            .values(
                requests_served=DeploymentRow.requests_served + usage.requests,
                prompt_tokens=DeploymentRow.prompt_tokens + usage.prompt_tokens,
                completion_tokens=DeploymentRow.completion_tokens + usage.completion_tokens,
            )
        )


def add_project_usage(session: Session, deltas: dict[str, Usage]) -> None:
    for project_id in sorted(deltas):  # in id order, as add_usage
        usage = deltas[project_id]
        session.execute(
            update(ProjectRow)
            .where(ProjectRow.id == project_id)
            .values(
                requests_served=ProjectRow.requests_served + usage.requests,
                prompt_tokens=ProjectRow.prompt_tokens + usage.prompt_tokens,
                completion_tokens=ProjectRow.completion_tokens + usage.completion_tokens,
            )
        )
