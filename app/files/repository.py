from __future__ import annotations

from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.jobs import state
from app.pagination import keyset
from app.tables import FileRow, JobRow


def get(session: Session, file_id: str, project_id: str | None = None) -> FileRow | None:
    """The file, if it is not deleted and belongs to project_id.

    project_id None reads any project's file: only for workers, which act on rows a request
    already scoped; every request path passes the caller's project.
    """
    row = session.get(FileRow, file_id)
    if row is None or row.deleted:
        return None
    return None if project_id is not None and row.project_id != project_id else row


def stored_bytes(session: Session, project_id: str) -> int:
    """What the project's files take in the store: the storage quota counts this."""
    query = select(func.coalesce(func.sum(FileRow.bytes), 0)).where(
        FileRow.project_id == project_id, FileRow.deleted.is_(False)
    )
    return int(session.scalar(query) or 0)


def list_page(
    session: Session,
    *,
    project_id: str,
    after: str | None,
    limit: int,
    purpose: str | None,
    order: Literal["asc", "desc"] = "desc",
) -> list[FileRow]:
    """Up to limit + 1 files, newest first (or oldest first), after the file `after`."""
    query = select(FileRow).where(FileRow.project_id == project_id, FileRow.deleted.is_(False))
    if purpose:
        query = query.where(FileRow.purpose == purpose)
    return keyset(
        session,
        query,
        id_column=FileRow.id,
        keys=(FileRow.created_ns, FileRow.id),
        after=after,
        limit=limit,
        kind="file",
        # a file deleted since the previous page still anchors the next one
        scope=(FileRow.project_id == project_id,),
        order=order,
    )


def active_jobs_using(session: Session, file_id: str) -> list[str]:
    query = select(JobRow.id).where(
        JobRow.status.in_(state.ACTIVE),
        (JobRow.training_file == file_id) | (JobRow.validation_file == file_id),
    )
    return list(session.scalars(query))
