from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.ids import new_id
from app.tables import JobEventRow, JobMetricRow, JobRow


def get(session: Session, job_id: str) -> JobRow | None:
    return session.get(JobRow, job_id)


def list_page(session: Session, *, after: str | None, limit: int) -> list[JobRow]:
    query = select(JobRow)
    if after:
        anchor = session.get(JobRow, after)
        if anchor is not None:
            query = query.where(
                (JobRow.created_ns < anchor.created_ns)
                | ((JobRow.created_ns == anchor.created_ns) & (JobRow.id < anchor.id))
            )
    query = query.order_by(JobRow.created_ns.desc(), JobRow.id.desc()).limit(limit + 1)
    return list(session.scalars(query))


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
    query = select(JobEventRow).where(JobEventRow.job_id == job_id)
    if after:
        anchor = session.scalar(select(JobEventRow.seq).where(JobEventRow.id == after))
        if anchor is not None:
            query = query.where(JobEventRow.seq < anchor)
    return list(session.scalars(query.order_by(JobEventRow.seq.desc()).limit(limit + 1)))


def add_metric(
    session: Session, job_id: str, kind: str, step: int, epoch: float | None, values: dict[str, Any]
) -> None:
    session.add(JobMetricRow(job_id=job_id, kind=kind, step=step, epoch=epoch, values=values))


def list_metrics(session: Session, job_id: str) -> list[JobMetricRow]:
    query = select(JobMetricRow).where(JobMetricRow.job_id == job_id).order_by(JobMetricRow.seq)
    return list(session.scalars(query))


def clear_metrics(session: Session, job_id: str) -> None:
    session.execute(delete(JobMetricRow).where(JobMetricRow.job_id == job_id))
