"""Every query for evaluations, the worker's claim and lease included."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.pagination import keyset
from app.tables import EvaluationRow


def get(
    session: Session, evaluation_id: str, project_id: str | None = None
) -> EvaluationRow | None:
    """The evaluation, if it belongs to project_id (None: any project, for workers only)."""
    row = session.get(EvaluationRow, evaluation_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        return None
    return row


def list_page(
    session: Session, *, project_id: str, after: str | None, limit: int
) -> list[EvaluationRow]:
    """Up to limit + 1 evaluations, newest first, after the evaluation `after`."""
    return keyset(
        session,
        select(EvaluationRow).where(EvaluationRow.project_id == project_id),
        id_column=EvaluationRow.id,
        keys=(EvaluationRow.created_ns, EvaluationRow.id),
        after=after,
        limit=limit,
        kind="evaluation",
        scope=(EvaluationRow.project_id == project_id,),
    )


def claim(session: Session, evaluation_id: str, owner: str, lease_seconds: float) -> int | None:
    """Take the evaluation if it is queued or its runner's lease expired; the attempt number.

    A conditional UPDATE, so two workers given the same message never both run it.
    """
    now = time.time()
    result = session.execute(
        update(EvaluationRow)
        .where(
            EvaluationRow.id == evaluation_id,
            or_(
                EvaluationRow.status == "queued",
                (EvaluationRow.status == "running") & (EvaluationRow.lease_expires_at < now),
            ),
        )
        .values(
            status="running",
            attempt=EvaluationRow.attempt + 1,
            lease_owner=owner,
            lease_expires_at=now + lease_seconds,
            started_at=int(now),
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    return session.scalar(select(EvaluationRow.attempt).where(EvaluationRow.id == evaluation_id))


def renew(
    session: Session, evaluation_id: str, owner: str, attempt: int, lease_seconds: float
) -> bool:
    """Extend the lease; False when another runner took the evaluation over."""
    result = session.execute(
        update(EvaluationRow)
        .where(
            EvaluationRow.id == evaluation_id,
            EvaluationRow.lease_owner == owner,
            EvaluationRow.attempt == attempt,
            EvaluationRow.status == "running",
        )
        .values(lease_expires_at=time.time() + lease_seconds)
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


def finish(session: Session, evaluation_id: str, owner: str, attempt: int, **values: Any) -> bool:
    """Record the outcome (status, metrics or error) if this runner still holds the lease."""
    result = session.execute(
        update(EvaluationRow)
        .where(
            EvaluationRow.id == evaluation_id,
            EvaluationRow.lease_owner == owner,
            EvaluationRow.attempt == attempt,
            EvaluationRow.status == "running",
        )
        .values(finished_at=int(time.time()), lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


def reconcile(
    session: Session,
    requeue_after_seconds: float,
    broker_lost: bool = False,
    max_workers_lost: int = 3,
) -> list[str]:
    """The reconciler's pass over evaluations (app/jobs/reconciler.py); returns the ids to
    send to the workers again once the caller committed. A runner whose lease expired was
    lost: the evaluation is queued again (its next claim is a new attempt), or fails with
    `worker_lost` once `max_workers_lost` runners were lost on it. A queued evaluation not
    sent for `requeue_after_seconds` (its message lost), or any queued one when the broker
    lost everything, is sent again; a duplicate only meets a claim that fails."""
    now = time.time()
    to_send: list[str] = []
    expired = session.scalars(
        select(EvaluationRow).where(
            EvaluationRow.status == "running", EvaluationRow.lease_expires_at < now
        )
    ).all()
    for row in expired:
        row.workers_lost = (row.workers_lost or 0) + 1
        row.lease_owner = None
        row.lease_expires_at = None
        if row.workers_lost >= max_workers_lost:
            row.status = "failed"
            row.finished_at = int(now)
            row.error = {
                "code": "worker_lost",
                "message": (
                    f"{row.workers_lost} workers stopped answering while running this "
                    "evaluation (killed, out of host memory, or their machine lost); it is not "
                    "handed to another one. Check the worker logs, then evaluate a smaller "
                    "file. TUNERY_MAX_WORKERS_LOST sets how many are tried."
                ),
                "param": None,
            }
            continue
        row.status = "queued"
        row.enqueued_at = now
        to_send.append(row.id)
    waiting = select(EvaluationRow).where(EvaluationRow.status == "queued")
    if not broker_lost:
        waiting = waiting.where(
            (EvaluationRow.enqueued_at.is_(None))
            | (EvaluationRow.enqueued_at < now - requeue_after_seconds)
        )
    for row in session.scalars(waiting).all():
        if row.id not in to_send:
            row.enqueued_at = now
            to_send.append(row.id)
    return to_send
