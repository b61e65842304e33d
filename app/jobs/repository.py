from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.ids import new_id
from app.pagination import keyset
from app.tables import JobCheckpointRow, JobEventRow, JobMetricRow, JobRow


def get(session: Session, job_id: str, project_id: str | None = None) -> JobRow | None:
    """The job, if it belongs to project_id (None: any project, for workers only)."""
    row = session.get(JobRow, job_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        return None
    return row


def count_unfinished(session: Session, project_id: str, statuses: tuple[str, ...]) -> int:
    query = (
        select(func.count())
        .select_from(JobRow)
        .where(JobRow.project_id == project_id, JobRow.status.in_(statuses))
    )
    return int(session.scalar(query) or 0)


def list_page(session: Session, *, project_id: str, after: str | None, limit: int) -> list[JobRow]:
    """Up to limit + 1 jobs, newest first, after the job `after`."""
    return keyset(
        session,
        select(JobRow).where(JobRow.project_id == project_id),
        id_column=JobRow.id,
        keys=(JobRow.created_ns, JobRow.id),
        after=after,
        limit=limit,
        kind="fine-tuning job",
        scope=(JobRow.project_id == project_id,),
    )


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEventRow:
    row = JobEventRow(
        id=new_id("ftevent"), job_id=job_id, level=level, type=type, message=message, data=data
    )
    session.add(row)
    return row


def list_events(
    session: Session, job_id: str, *, after: str | None, limit: int
) -> list[JobEventRow]:
    """Newest first, as OpenAI lists them; `after` is the last event id already seen."""
    return keyset(
        session,
        select(JobEventRow).where(JobEventRow.job_id == job_id),
        id_column=JobEventRow.id,
        keys=(JobEventRow.seq,),
        after=after,
        limit=limit,
        kind="event of this job",
        scope=(JobEventRow.job_id == job_id,),
    )


def add_metric(
    session: Session, job_id: str, kind: str, step: int, epoch: float | None, values: dict[str, Any]
) -> None:
    session.add(JobMetricRow(job_id=job_id, kind=kind, step=step, epoch=epoch, values=values))


def list_metrics(session: Session, job_id: str) -> list[JobMetricRow]:
    query = select(JobMetricRow).where(JobMetricRow.job_id == job_id).order_by(JobMetricRow.seq)
    return list(session.scalars(query))


def clear_metrics(session: Session, job_id: str, after_step: int | None = None) -> None:
    """Drop the job's metrics, or only those after `after_step` (a resumed run logs them again)."""
    query = delete(JobMetricRow).where(JobMetricRow.job_id == job_id)
    if after_step is not None:
        query = query.where(JobMetricRow.step > after_step)
    session.execute(query)


# -- checkpoints -------------------------------------------------------------------------------


def get_checkpoint(session: Session, checkpoint_id: str) -> JobCheckpointRow | None:
    return session.get(JobCheckpointRow, checkpoint_id)


def checkpoint_by_model_name(session: Session, model_name: str) -> JobCheckpointRow | None:
    return session.scalar(select(JobCheckpointRow).where(JobCheckpointRow.model_name == model_name))


def checkpoint_at(session: Session, job_id: str, step: int) -> JobCheckpointRow | None:
    return session.scalar(
        select(JobCheckpointRow).where(
            JobCheckpointRow.job_id == job_id, JobCheckpointRow.step == step
        )
    )


def latest_checkpoint(session: Session, job_id: str) -> JobCheckpointRow | None:
    return session.scalar(
        select(JobCheckpointRow)
        .where(JobCheckpointRow.job_id == job_id)
        .order_by(JobCheckpointRow.step.desc())
        .limit(1)
    )


def list_checkpoints(
    session: Session, job_id: str, *, after: str | None, limit: int
) -> list[JobCheckpointRow]:
    """Newest (highest step) first, as OpenAI lists them; `after` is the last id seen."""
    return keyset(
        session,
        select(JobCheckpointRow).where(JobCheckpointRow.job_id == job_id),
        id_column=JobCheckpointRow.id,
        keys=(JobCheckpointRow.step,),
        after=after,
        limit=limit,
        kind="checkpoint of this job",
        scope=(JobCheckpointRow.job_id == job_id,),
    )


def save_checkpoint(session: Session, row: JobCheckpointRow) -> JobCheckpointRow:
    """Insert, or update the job's checkpoint at the same step (written again after a resume
    from an earlier one: the same step, key and name; the id stays)."""
    existing = checkpoint_at(session, row.job_id, row.step)
    if existing is None:
        session.add(row)
        return row
    for name in ("epoch", "metrics", "artifact_key", "state_key", "best_step", "attempt"):
        setattr(existing, name, getattr(row, name))
    existing.created_at = int(time.time())
    return existing
