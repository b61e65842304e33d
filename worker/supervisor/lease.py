"""The attempt's hold on its job: the row re-read as owned, the lease renewed while slow work
runs outside the relay loop, and patience with a database that went away."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app.db import database_unavailable
from app.jobs import state
from app.tables import JobRow

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# how long a supervisor waits for a database that went away before it gives the attempt up
DATABASE_PATIENCE_SECONDS = 600.0

T = TypeVar("T")


class LeaseLost(Exception):
    """Another worker (or the reconciler) took the job: stop without recording anything."""


@dataclass(frozen=True)
class Lease:
    """Attempt `number` of `job_id`, held by `owner`."""

    job_id: str
    number: int
    owner: str
    lease_seconds: float
    heartbeat_seconds: float

    def owned(self, session: Session) -> JobRow:
        """The job's row, locked to this attempt; raises LeaseLost when it is not ours."""
        row = state.owned(session, self.job_id, self.owner, self.number)
        if row is None:
            raise LeaseLost(self.job_id)
        return row

    def renew(self, session: Session) -> bool:
        return state.renew_lease(session, self.job_id, self.owner, self.number, self.lease_seconds)

    @contextmanager
    def kept(self, make_session: sessionmaker[Session]) -> Iterator[None]:
        """Renew the lease from a thread (each beat its own short session) while the caller
        does slow I/O outside the relay loop."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_seconds):
                try:
                    with make_session() as session:
                        kept = self.renew(session)
                        session.commit()
                except Exception:
                    log.warning("renewing the lease of %s failed", self.job_id, exc_info=True)
                    continue
                if not kept:
                    return  # the caller finds out when it next writes the job

        thread = threading.Thread(target=beat, name=f"lease-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def patiently(record: Callable[[], T], job_id: str) -> T:
    """Run `record` (a write of the attempt's outcome), waiting up to
    DATABASE_PATIENCE_SECONDS for a database that went away rather than losing it."""
    deadline = time.monotonic() + DATABASE_PATIENCE_SECONDS
    while True:
        try:
            return record()
        except Exception as exc:
            if not database_unavailable(exc) or time.monotonic() > deadline:
                raise
            log.warning("database unavailable recording %s; retrying: %r", job_id, exc)
            time.sleep(POLL_SECONDS * 4)
