"""The supervision loop: start the trainer, relay its events and checkpoints to the
database, keep the lease, enforce cancel and pause, ride out a database outage."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.db import database_unavailable
from app.jobs.spec import dump_spec
from app.settings import Settings
from app.storage import ArtifactStore
from worker.supervisor.devices import oom_kills
from worker.supervisor.lease import DATABASE_PATIENCE_SECONDS, POLL_SECONDS, LeaseLost
from worker.supervisor.prepare import Attempt
from worker.supervisor.relay import EventRelay, record_uploads, relay
from worker.supervisor.transfer import CheckpointUploads
from worker.training.events import TrainerEvent
from worker.training.launch import TrainerGroup, launch
from worker.training.layout import PAUSE_FILENAME

log = logging.getLogger(__name__)


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
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "0" if settings.allow_hub else "1"
    if settings.trainer_threads:
        env["TUNERY_TRAINER_THREADS"] = str(settings.trainer_threads)
    return launch(spec_path, attempt.spec.processes, env, attempt.work)


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
    try:
        while True:
            returncode = group.poll()
            backlog.extend(tail.read_new())
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
            time.sleep(POLL_SECONDS)
    except BaseException:
        group.terminate()
        raise
    finally:
        uploads.close()
    return Ended(cancelled, group, tail, kills_before)
