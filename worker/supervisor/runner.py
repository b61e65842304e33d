"""Runs one claimed job: the Celery task's body. Claims the job, prepares the attempt,
supervises the trainer, and records how it ended through the job rules (app/jobs)."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid

from sqlalchemy.orm import Session, sessionmaker

from app.db import database_unavailable
from app.failures import Failure
from app.jobs import outcomes, state
from app.settings import Settings
from app.storage import ArtifactStore
from worker.supervisor.crash import crash_failure
from worker.supervisor.devices import oom_kills
from worker.supervisor.lease import Lease, LeaseLost, patiently
from worker.supervisor.loop import Ended, supervise
from worker.supervisor.prepare import Attempt, prepare
from worker.supervisor.transfer import store_model
from worker.training.events import Failed, Paused, Succeeded
from worker.training.layout import MANIFEST, MODEL_DIRNAME

log = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        make_session: sessionmaker[Session],
        store: ArtifactStore,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.make_session = make_session
        self.store = store
        self.owner = owner or worker_identity()

    @property
    def host(self) -> str:
        return self.owner.split(":")[0]

    def run(self, job_id: str) -> str:
        """Claim and run a job; returns what happened (for logs and tests)."""
        try:
            lease = self._claim(job_id)
            if lease is None:
                return "not-claimed"
            try:
                # checking files and downloading checkpoints can take a while
                with lease.kept(self.make_session):
                    attempt = prepare(self.settings, self.make_session, self.store, lease)
            except Failure as failure:
                self._record_failure(lease, failure)
                return "failed"
            ended = supervise(attempt, self.settings, self.make_session, self.store)
            if ended.cancelled:
                return patiently(lambda: self._record_cancelled(lease), job_id)
            return self._finish(attempt, ended)
        except LeaseLost:
            log.warning("lost the lease on %s; stopping", job_id)
            return "lease-lost"

    def _claim(self, job_id: str) -> Lease | None:
        with self.make_session() as session:
            number = state.claim(session, job_id, self.owner, self.settings.lease_seconds)
            if number is None:
                session.rollback()
                return None
            outcomes.attempt_started(session, job_id, number, self.host)
            session.commit()
        return Lease(
            job_id,
            number,
            self.owner,
            self.settings.lease_seconds,
            self.settings.heartbeat_seconds,
        )

    # -- outcomes ---------------------------------------------------------------------------

    def _finish(self, attempt: Attempt, ended: Ended) -> str:
        returncode = ended.group.poll()
        outcome = ended.tail.outcome
        if isinstance(outcome, Succeeded) and returncode == 0:
            success = outcome
            # uploaded before any session opens: no transaction waits on the store
            with attempt.lease.kept(self.make_session):
                try:
                    key = store_model(self.store, attempt.job_id, attempt.work)
                except Exception as exc:
                    log.exception("storing the model of %s failed", attempt.job_id)
                    return self._record_failure(attempt.lease, _store_failure(exc))
            return patiently(lambda: self._record_success(attempt, success, key), attempt.job_id)
        if isinstance(outcome, Paused) and returncode == 0:
            pause = outcome
            return patiently(lambda: self._record_pause(attempt, pause), attempt.job_id)
        if isinstance(outcome, Failed):
            failure = Failure(outcome.code, outcome.message, outcome.param)
        else:
            kills = oom_kills()
            failure = crash_failure(
                returncode if returncode is not None else -1,
                ended.group.logs,
                ended.kills_before is not None and (kills or 0) > ended.kills_before,
            )
        return self._record_failure(attempt.lease, failure)

    def _record_success(self, attempt: Attempt, outcome: Succeeded, key: str) -> str:
        with self.make_session() as session:
            try:
                meta = json.loads((attempt.work / MODEL_DIRNAME / MANIFEST).read_text())
                outcomes.succeeded(
                    session,
                    attempt.lease.owned(session),
                    artifact_key=key,
                    model_format=str(meta.get("format", "adapter")),
                    trained_tokens=outcome.trained_tokens,
                    metrics=outcome.metrics,
                    result_step=outcome.result_step,
                    result_reason=outcome.result_reason,
                    best_step=outcome.best_step,
                    stopped_early=outcome.stopped_early,
                )
                session.commit()
            except LeaseLost:
                raise
            except Exception as exc:
                if database_unavailable(exc):
                    raise  # recorded again once it is back
                log.exception("recording the model of %s failed", attempt.job_id)
                session.rollback()
                error = _store_failure(exc).as_error()
                outcomes.failed(session, attempt.lease.owned(session), error)
                session.commit()
                return "failed"
        return "succeeded"

    def _record_pause(self, attempt: Attempt, outcome: Paused) -> str:
        with self.make_session() as session:
            outcomes.paused(session, attempt.lease.owned(session), outcome.step)
            session.commit()
        return "paused"

    def _record_failure(self, lease: Lease, failure: Failure) -> str:
        def record() -> str:
            with self.make_session() as session:
                outcomes.failed(session, lease.owned(session), failure.as_error())
                session.commit()
            return "failed"

        return patiently(record, lease.job_id)

    def _record_cancelled(self, lease: Lease) -> str:
        with self.make_session() as session:
            outcomes.cancelled(session, lease.owned(session))
            session.commit()
        return "cancelled"


def _store_failure(exc: BaseException) -> Failure:
    return Failure(
        "artifact_store_error",
        f"Training finished but the model could not be stored: {exc}. Check "
        "TUNERY_STORAGE_URL and free space, then retry the job.",
    )
