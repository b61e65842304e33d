"""The supervision loop: start the trainer, relay its events and checkpoints to the
database, keep the lease, enforce cancel and pause, ride out a database outage."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.db import database_unavailable
from app.jobs.spec import dump_spec
from app.settings import Settings
from app.storage import ArtifactStore
from app.sweeps import repository as sweeps_repo
from worker import starts
from worker.supervisor.devices import oom_kills
from worker.supervisor.lease import DATABASE_PATIENCE_SECONDS, POLL_SECONDS, LeaseLost
from worker.supervisor.prepare import Attempt
from worker.supervisor.relay import EventRelay, record_uploads, relay
from worker.supervisor.transfer import CheckpointUploads
from worker.training.events import Eval, TrainerEvent
from worker.training.launch import TrainerGroup, launch
from worker.training.layout import PAUSE_FILENAME, VERDICT_FILENAME

log = logging.getLogger(__name__)


# how often the supervisor of a trainer waiting for a verdict looks for it
VERDICT_POLL_SECONDS = 0.1


class Verdicts:
    """A sweep trial's verdicts, relayed to its trainer (worker/training/verdict.py): once
    the sweep has judged the evaluation the trainer waits on, the judged step is written to
    verdict.step and the trainer goes on. A pruned trial's job is cancelled in the same
    commit, and the loop stops the trainer instead."""

    def __init__(self, job_id: str, work: Path) -> None:
        self.job_id = job_id
        self.path = work / VERDICT_FILENAME
        # the step of the evaluation the trainer waits on (None: it does not wait)
        self.awaiting: int | None = None

    def evaluated(self, events: list[TrainerEvent]) -> None:
        for event in events:
            if isinstance(event, Eval):
                self.awaiting = max(self.awaiting or 0, event.step)

    def judge(self, session: Session) -> None:
        if self.awaiting is None:
            return
        judged = sweeps_repo.judged_step(session, self.job_id)
        # None: nothing judges the trial any more (its sweep ended): let it go on
        if judged is None or judged >= self.awaiting:
            self.release(max(judged or 0, self.awaiting))

    def release(self, step: int) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(str(step), encoding="ascii")
        os.replace(partial, self.path)
        self.awaiting = None


@dataclass
class Ended:
    """How the trainer's run ended, for the runner to record."""

    cancelled: bool
    group: TrainerGroup
    tail: EventRelay
    # the cgroup's out-of-memory kills before the trainer started (None: unknown)
    kills_before: int | None


def start_trainer(attempt: Attempt, settings: Settings) -> TrainerGroup:
    spec_path = attempt.work / "spec.json"
    spec_path.write_text(dump_spec(attempt.spec))
    env = starts.child_env(settings)
    if settings.trainer_threads:
        env["TUNERY_TRAINER_THREADS"] = str(settings.trainer_threads)
    return launch(spec_path, attempt.spec.processes, env, attempt.work, settings)


def supervise(
    attempt: Attempt,
    settings: Settings,
    make_session: sessionmaker[Session],
    store: ArtifactStore,
) -> Ended:
    """Run the trainer to its end (or until cancelled); every pass is one short session."""
    lease = attempt.lease
    kills_before = oom_kills()
    group = start_trainer(attempt, settings)
    tail = EventRelay(attempt.spec.events_path)
    uploads = CheckpointUploads(store, attempt.job_id, attempt.work)
    next_heartbeat = time.monotonic() + settings.heartbeat_seconds
    started = time.time()
    cancelled = False
    # events read from the trainer but not yet committed (the database may be away)
    backlog: list[TrainerEvent] = []
    outage: float | None = None
    verdicts = Verdicts(attempt.job_id, attempt.work) if attempt.spec.verdict_seconds > 0 else None
    try:
        while True:
            returncode = group.poll()
            new_events = tail.read_new()
            backlog.extend(new_events)
            if verdicts is not None:
                verdicts.evaluated(new_events)
            try:
                with make_session() as session:
                    row = lease.owned(session)
                    relay(session, row, attempt, backlog, tail, uploads, started)
                    recorded = record_uploads(session, row, attempt, uploads)
                    if time.monotonic() >= next_heartbeat:
                        if not lease.renew(session):
                            session.commit()
                            raise LeaseLost(attempt.job_id)
                        next_heartbeat = time.monotonic() + settings.heartbeat_seconds
                    cancel = bool(row.cancel_requested)
                    if verdicts is not None and not cancel:
                        verdicts.judge(session)
                    if row.status == "pausing" and returncode is None:
                        (attempt.work / PAUSE_FILENAME).touch()
                    session.commit()
            except LeaseLost:
                raise
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # the trainer goes on; its events wait in the backlog, and the lease is
                # renewed when the database is back (lost by then only if it expired
                # and the reconciler gave the job to another worker)
                if outage is None:
                    outage = time.monotonic()
                    log.warning("database away while supervising %s: %r", attempt.job_id, exc)
                elif time.monotonic() - outage > DATABASE_PATIENCE_SECONDS:
                    raise
                time.sleep(POLL_SECONDS)
                continue
            backlog.clear()
            uploads.recorded(recorded)
            if outage is not None:
                log.warning(
                    "database back after %.1f s; %s carries on",
                    time.monotonic() - outage,
                    attempt.job_id,
                )
                outage = None
            if cancel and not cancelled:
                cancelled = True
                group.terminate()
                # one more pass relays what the trainer finished before it stopped
                continue
            if (returncode is not None or cancelled) and uploads.idle:
                break
            # a trainer waiting for its verdict is waited on closely
            waiting = verdicts is not None and verdicts.awaiting is not None
            time.sleep(VERDICT_POLL_SECONDS if waiting else POLL_SECONDS)
    except BaseException:
        group.terminate()
        raise
    finally:
        uploads.close()
    return Ended(cancelled, group, tail, kills_before)
