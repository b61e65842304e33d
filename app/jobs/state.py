"""The job state machine: every status change goes through `transition`."""

from __future__ import annotations

import time
from typing import Any

from app.tables import JobRow

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"validating_files", "queued", "running"})

ALLOWED: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "failed", "cancelled"}),
    # running -> queued: the worker was lost and the reconciler hands the job to another
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
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
    if new_status in TERMINAL:
        row.finished_at = int(time.time())
        row.lease_owner = None
        row.lease_expires_at = None
    for name, value in fields.items():
        setattr(row, name, value)


# Conditional transitions used across processes. Each is one UPDATE ... WHERE status = X so
# that two workers (or a worker and the reconciler) can never both win.


def claim(session: Any, job_id: str, owner: str, lease_seconds: float) -> int | None:
    """queued -> running for this owner. Returns the attempt number, or None if not won."""
    from sqlalchemy import update

    now = time.time()
    result = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.status == "queued",
            JobRow.cancel_requested.is_(False),
        )
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=now + lease_seconds,
            attempt=JobRow.attempt + 1,
            started_at=int(now),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    row = session.get(JobRow, job_id, populate_existing=True)
    return int(row.attempt) if row is not None else None


def renew_lease(session: Any, job_id: str, owner: str, attempt: int, lease_seconds: float) -> bool:
    """Extend the lease; False means this worker no longer owns the job and must stop."""
    from sqlalchemy import update

    result = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.status == "running",
            JobRow.lease_owner == owner,
            JobRow.attempt == attempt,
        )
        .values(lease_expires_at=time.time() + lease_seconds)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)


def owned(session: Any, job_id: str, owner: str, attempt: int) -> JobRow | None:
    """The job row, locked to this worker's lease, or None when the lease was lost."""
    row: JobRow | None = session.get(JobRow, job_id, populate_existing=True)
    if row is None or row.status != "running" or row.lease_owner != owner or row.attempt != attempt:
        return None
    return row
