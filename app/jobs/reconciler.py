"""Finds jobs whose worker vanished or whose wake-up message was lost, and requeues them.

The database is the truth; the broker may lose or duplicate messages. Running jobs whose
lease expired go back to queued (the next claim bumps the attempt number and resumes);
queued jobs that nobody claimed for a while are enqueued again (a duplicate only meets a
claim that fails). When the broker lost everything it held (a Redis restarted empty: see
app/broker.py BrokerWatch), every waiting job is enqueued again at once.
Evaluations get the same care (app/evaluations/repository.py `reconcile`). A job or
evaluation that lost `max_workers_lost` workers fails (`worker_lost`) rather than go on
killing workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.evaluations import repository as evaluations
from app.jobs import repository, state
from app.tables import JobRow

log = logging.getLogger(__name__)


class BrokerMarker(Protocol):
    def intact(self) -> bool: ...

    def mark(self) -> None: ...


def reconcile(
    session: Session,
    requeue_after_seconds: float,
    broker_lost: bool = False,
    max_workers_lost: int = 3,
) -> list[str]:
    """One pass over the jobs; returns the ids to enqueue (after the caller commits).
    `broker_lost`: the broker lost its messages, so every waiting job is enqueued again,
    however recent. A job whose worker stopped answering for the `max_workers_lost`th time
    fails with `worker_lost` instead of going to yet another worker."""
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
        row.workers_lost = (row.workers_lost or 0) + 1
        if row.cancel_requested:
            state.transition(row, "cancelled")
            repository.add_event(session, row.id, "Job cancelled (its worker had stopped).")
        elif row.workers_lost >= max_workers_lost:
            state.transition(
                row,
                "failed",
                error={
                    "code": "worker_lost",
                    "message": (
                        f"{row.workers_lost} workers stopped answering while running this job "
                        "(killed, out of host memory, or their machine lost); it is not handed "
                        "to another one. Check the worker logs (an OOM kill shows in dmesg), "
                        "then create the job again, e.g. with a smaller batch_size or "
                        "max_seq_length. TUNERY_MAX_WORKERS_LOST sets how many are tried."
                    ),
                    "param": None,
                },
                estimated_finish=None,
            )
            repository.add_event(
                session,
                row.id,
                f"{lost}; {row.workers_lost} workers lost on this job, so it failed (worker_lost).",
                level="error",
            )
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
    waiting = select(JobRow).where(JobRow.status.in_(state.CLAIMABLE), JobRow.lease_owner.is_(None))
    if not broker_lost:
        waiting = waiting.where(
            (JobRow.enqueued_at.is_(None)) | (JobRow.enqueued_at < now - requeue_after_seconds)
        )
    for row in session.scalars(waiting).all():
        if row.id in to_enqueue:
            continue
        row.enqueued_at = now
        to_enqueue.append(row.id)
        if broker_lost:
            repository.add_event(
                session,
                row.id,
                "The broker lost its queued messages (it restarted empty, was flushed, or is "
                "new); job sent to the workers again.",
                level="warning",
            )
    return to_enqueue


class Reconciler(threading.Thread):
    def __init__(
        self,
        make_session: sessionmaker[Session],
        enqueue: Callable[[str], None],
        every_seconds: float,
        requeue_after_seconds: float,
        broker: BrokerMarker | None = None,
        enqueue_evaluation: Callable[[str], None] | None = None,
        max_workers_lost: int = 3,
    ) -> None:
        super().__init__(name="tunery-reconciler", daemon=True)
        self.make_session = make_session
        self.enqueue = enqueue
        self.enqueue_evaluation = enqueue_evaluation
        self.every_seconds = every_seconds
        self.requeue_after_seconds = requeue_after_seconds
        self.broker = broker
        self.max_workers_lost = max_workers_lost
        self.stopped = threading.Event()

    def run_once(self) -> list[str]:
        """One pass; the ids of the jobs and evaluations sent to the workers again."""
        # asked first: a broker that cannot be reached fails the pass, which is tried again
        lost = self.broker is not None and not self.broker.intact()
        with self.make_session() as session:
            ids = reconcile(
                session,
                self.requeue_after_seconds,
                broker_lost=lost,
                max_workers_lost=self.max_workers_lost,
            )
            evaluation_ids: list[str] = []
            if self.enqueue_evaluation is not None:
                evaluation_ids = evaluations.reconcile(
                    session,
                    self.requeue_after_seconds,
                    broker_lost=lost,
                    max_workers_lost=self.max_workers_lost,
                )
            session.commit()
        for job_id in ids:
            self.enqueue(job_id)
        for evaluation_id in evaluation_ids:
            assert self.enqueue_evaluation is not None
            self.enqueue_evaluation(evaluation_id)
        sent = ids + evaluation_ids
        if lost:
            assert self.broker is not None
            # only once everything waiting was sent: a pass that failed on the way repeats it
            self.broker.mark()
            log.warning(
                "the broker had lost its messages; %d waiting job(s) and evaluation(s) sent again",
                len(sent),
            )
        return sent

    def run(self) -> None:
        # a first pass at once: what the broker lost while no API ran is sent again before
        # requests arrive, not in the middle of them
        while True:
            try:
                ids = self.run_once()
                if ids:
                    log.info("reconciler enqueued %s", ", ".join(ids))
            except Exception:
                log.warning("reconciler pass failed", exc_info=True)
            if self.stopped.wait(self.every_seconds):
                return

    def stop(self) -> None:
        self.stopped.set()
