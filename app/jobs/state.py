"""The job state machine: every status change goes through this module.

    validating_files ─┐ (a worker claims the job and checks its files again)
                      ├─► running ─► succeeded | failed | cancelled
    queued ───────────┘     │  ▲
                            │  └── queued ◄── paused ◄── pausing ◄── running
                            └──► queued (its worker was lost; the next attempt resumes)

`transition` changes a row already loaded in this session; the conditional updates below
(claim, renew_lease) are single UPDATE ... WHERE statements, so that two workers, or a
worker and the reconciler, can never both win.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import case, update
from sqlalchemy.orm import Session

from app.tables import JobRow

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"validating_files", "queued", "running", "pausing", "paused"})
# Statuses in which a worker holds the job's lease.
LEASED = frozenset({"validating_files", "running", "pausing"})
# Statuses a worker may claim the job in.
CLAIMABLE = frozenset({"validating_files", "queued"})

ALLOWED: dict[str, frozenset[str]] = {
    # a claimed job's files check out (-> running) or not (-> failed)
    "validating_files": frozenset({"running", "failed", "cancelled"}),
    "queued": frozenset({"running", "failed", "cancelled"}),
    # running -> queued: the worker was lost and the reconciler hands the job to another
    "running": frozenset({"succeeded", "failed", "cancelled", "queued", "pausing"}),
    # the trainer may finish (or fail) before it sees the pause; a lost worker's job pauses
    "pausing": frozenset({"paused", "succeeded", "failed", "cancelled"}),
    "paused": frozenset({"queued", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class IllegalTransition(Exception):
    pass


def transition(row: JobRow, new_status: str, **fields: Any) -> None:
    if new_status not in ALLOWED.get(row.status, frozenset()):
        raise IllegalTransition(f"job {row.id}: {row.status} -> {new_status} is not allowed")
    row.status = new_status
    if new_status not in LEASED:
        release(row)
    if new_status in TERMINAL:
        row.finished_at = int(time.time())
    for name, value in fields.items():
        setattr(row, name, value)


def release(row: JobRow) -> None:
    """Drop the lease (no status change): the job waits for the next claim."""
    row.lease_owner = None
    row.lease_expires_at = None


def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> int | None:
    """Take the lease of a claimable job for this owner; returns the attempt number, or None
    when another worker won (or the job is not claimable).

    A queued job becomes running; a job still validating_files keeps that status until its
    files are checked again (`files_checked`).
    """
    now = time.time()
    result = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.status.in_(CLAIMABLE),
            JobRow.lease_owner.is_(None),
            JobRow.cancel_requested.is_(False),
        )
        .values(
            status=case((JobRow.status == "queued", "running"), else_=JobRow.status),
            lease_owner=owner,
            lease_expires_at=now + lease_seconds,
            attempt=JobRow.attempt + 1,
            started_at=int(now),
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    row = session.get(JobRow, job_id, populate_existing=True)
    return int(row.attempt) if row is not None else None


def files_checked(row: JobRow) -> None:
    """validating_files -> running, once the claiming worker found the files good."""
    transition(row, "running")


def renew_lease(
    session: Session, job_id: str, owner: str, attempt: int, lease_seconds: float
) -> bool:
    """Extend the lease; False means this worker no longer owns the job and must stop."""
    result = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.status.in_(LEASED),
            JobRow.lease_owner == owner,
            JobRow.attempt == attempt,
        )
        .values(lease_expires_at=time.time() + lease_seconds)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def owned(session: Session, job_id: str, owner: str, attempt: int) -> JobRow | None:
    """The job row, locked to this worker's lease, or None when the lease was lost."""
    row: JobRow | None = session.get(JobRow, job_id, populate_existing=True)
    if (
        row is None
        or row.status not in LEASED
        or row.lease_owner != owner
        or row.attempt != attempt
    ):
        return None
    return row


# -- user requests ---------------------------------------------------------------------------


def request_pause(row: JobRow) -> None:
    """running -> pausing: the worker has the trainer checkpoint and exit."""
    transition(row, "pausing")


def paused(row: JobRow, **fields: Any) -> None:
    """pausing -> paused: the checkpoint is stored; the lease is released."""
    transition(row, "paused", estimated_finish=None, **fields)


def resume(row: JobRow, now: float) -> None:
    """paused -> queued: the next claim resumes from the job's last checkpoint."""
    transition(row, "queued", enqueued_at=now)


def requeue(row: JobRow, now: float) -> None:
    """running -> queued after the worker was lost (the reconciler)."""
    transition(row, "queued", enqueued_at=now)
