from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import FileRow, JobRow


def get(session: Session, file_id: str) -> FileRow | None:
    row = session.get(FileRow, file_id)
    return None if row is None or row.deleted else row


def list_page(
    session: Session, *, after: str | None, limit: int, purpose: str | None
) -> list[FileRow]:
    query = select(FileRow).where(FileRow.deleted.is_(False))
    if purpose:
        query = query.where(FileRow.purpose == purpose)
    if after:
        anchor = session.get(FileRow, after)
        if anchor is not None:
            query = query.where(
                (FileRow.created_ns < anchor.created_ns)
                | ((FileRow.created_ns == anchor.created_ns) & (FileRow.id < anchor.id))
            )
    query = query.order_by(FileRow.created_ns.desc(), FileRow.id.desc()).limit(limit + 1)
    return list(session.scalars(query))


def active_jobs_using(session: Session, file_id: str) -> list[str]:
    query = select(JobRow.id).where(
        JobRow.status.in_(("validating_files", "queued", "running")),
        (JobRow.training_file == file_id) | (JobRow.validation_file == file_id),
    )
    return list(session.scalars(query))
