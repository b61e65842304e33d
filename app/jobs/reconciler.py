"""Finds jobs whose worker vanished or whose wake-up message was lost, and requeues them.

The database is the truth; the broker may lose or duplicate messages. Running jobs whose
lease expired go back to queued (the next claim bumps the attempt number and resumes);
queued jobs that nobody claimed for a while are enqueued again (a duplicate only meets a
claim that fails).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import repository, state
from app.tables import JobRow

log = logging.getLogger(__name__)


def reconcile(session: Session, requeue_after_seconds: float) -> list[str]:
    """One pass; returns the ids to enqueue (after the caller commits)."""
    now = time.time()
    to_enqueue: list[str] = []
    expired = session.scalars(
        select(JobRow).where(
            JobRow.status.in_(state.LEASED),
            JobRow.lease_owner.is_not(None),
            JobRow.lease_expires_at < now,
        )
    ).all()
    for row in expired:
        lost = f"The worker running attempt {row.attempt} stopped answering"
        if row.cancel_requested:
            state.transition(row, "cancelled")
            repository.add_event(session, row.id, "Job cancelled (its worker had stopped).")
        elif row.status == "validating_files":
            # nothing ran yet: the next worker checks the files again
            state.release(row)
            row.enqueued_at = now
            repository.add_event(session, row.id, f"{lost}; job requeued.", level="warning")
            to_enqueue.append(row.id)
        elif row.status == "pausing":
            # it was stopping anyway: its last stored checkpoint is where it resumes from
            state.paused(row)
            repository.add_event(
                session,
                row.id,
                f"{lost} while pausing; job paused at its last stored checkpoint.",
                level="warning",
            )
        else:
            state.requeue(row, now)
            repository.add_event(
                session,
                row.id,
                f"{lost}; job requeued to resume from its last checkpoint.",
                level="warning",
            )
            to_enqueue.append(row.id)
    stale = session.scalars(
        select(JobRow).where(
            JobRow.status.in_(state.CLAIMABLE),
            JobRow.lease_owner.is_(None),
            (JobRow.enqueued_at.is_(None)) | (JobRow.enqueued_at < now - requeue_after_seconds),
        )
    ).all()
    for row in stale:
        if row.id in to_enqueue:
            continue
        row.enqueued_at = now
        to_enqueue.append(row.id)
    return to_enqueue


class Reconciler(threading.Thread):
    def __init__(
        self,
        make_session: sessionmaker[Session],
        enqueue: Callable[[str], None],
        every_seconds: float,
        requeue_after_seconds: float,
    ) -> None:
        super().__init__(name="tunery-reconciler", daemon=True)
        self.make_session = make_session
        self.enqueue = enqueue
        self.every_seconds = every_seconds
        self.requeue_after_seconds = requeue_after_seconds
        self.stopped = threading.Event()

    def run_once(self) -> list[str]:
        with self.make_session() as session:
            ids = reconcile(session, self.requeue_after_seconds)
            session.commit()
        for job_id in ids:
            self.enqueue(job_id)
        return ids

    def run(self) -> None:
        while not self.stopped.wait(self.every_seconds):
            try:
                ids = self.run_once()
                if ids:
                    log.info("reconciler enqueued %s", ", ".join(ids))
            except Exception:
                log.warning("reconciler pass failed", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
