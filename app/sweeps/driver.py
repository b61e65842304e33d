"""The sweep driver: a thread of the API (beside the reconciler) that moves every running
sweep on every TUNERY_SWEEP_EVERY_SECONDS (app/sweeps/service.py `advance`).

Between those passes it looks every JUDGE_SECONDS for trials with evaluations not yet judged
(one indexed query) and drives their sweeps at once: a trial's trainer waits for the verdict
on each evaluation (worker/training/verdict.py), so a pruned trial stops at the evaluation
that pruned it and a trial that goes on waits only a moment.

Each sweep is held for its pass by a conditional UPDATE (SweepRow.driven_until), so the
drivers of several API processes never ask Optuna for the same sweep's trials at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.sweeps import repository, service
from app.tables import SweepRow

log = logging.getLogger(__name__)

# a pass that takes longer than this (a crashed API) lets another driver take the sweep
HOLD_SECONDS = 120.0
# how often the driver looks for evaluations that trainers wait on
JUDGE_SECONDS = 0.2


class SweepDriver(threading.Thread):
    def __init__(
        self,
        make_session: sessionmaker[Session],
        settings: Settings,
        enqueue: Callable[[str], None],
    ) -> None:
        super().__init__(name="tunery-sweeps", daemon=True)
        self.make_session = make_session
        self.settings = settings
        self.enqueue = enqueue
        self.stopped = threading.Event()

    def drive(self, sweep_id: str) -> list[str]:
        """One pass over one sweep; the ids of the trial jobs it started (enqueued)."""
        with self.make_session() as session:
            held = repository.claim(session, sweep_id, HOLD_SECONDS)
            session.commit()
        if not held:
            return []
        started: list[str] = []
        try:
            with self.make_session() as session:
                row = session.get(SweepRow, sweep_id)
                if row is not None:
                    started = service.advance(session, self.settings, row)
                    row.driven_until = None
                session.commit()
        except BaseException:
            with self.make_session() as session:
                row = session.get(SweepRow, sweep_id)
                if row is not None:
                    row.driven_until = None
                session.commit()
            raise
        for job_id in started:
            self.enqueue(job_id)
        return started

    def run_once(self) -> list[str]:
        return self._drive_all(repository.to_drive)

    def judge_waiting(self) -> list[str]:
        """Drive the sweeps whose trials wait for a verdict; the jobs started meanwhile."""
        return self._drive_all(repository.awaiting_judgement)

    def _drive_all(self, which: Callable[[Session], list[str]]) -> list[str]:
        with self.make_session() as session:
            sweep_ids = which(session)
        started: list[str] = []
        for sweep_id in sweep_ids:
            try:
                started += self.drive(sweep_id)
            except Exception:
                log.warning("sweep %s: driver pass failed", sweep_id, exc_info=True)
        return started

    def run(self) -> None:
        every = self.settings.sweep_every_seconds
        next_pass = 0.0
        while True:
            try:
                if time.monotonic() >= next_pass:
                    next_pass = time.monotonic() + every
                    self.run_once()
                else:
                    self.judge_waiting()
            except Exception:
                log.warning("sweep driver pass failed", exc_info=True)
            if self.stopped.wait(min(every, JUDGE_SECONDS)):
                return

    def stop(self) -> None:
        self.stopped.set()
