"""The trainer's events, read from events.jsonl as they are written and turned into the
job's rows (through the job rules in app/jobs/outcomes.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.jobs import outcomes
from app.tables import JobRow
from worker.supervisor.prepare import Attempt
from worker.supervisor.transfer import CheckpointUploads
from worker.training.events import (
    Checkpoint,
    EarlyStopped,
    Eval,
    Failed,
    Log,
    Message,
    Outcome,
    Paused,
    Progress,
    Started,
    Succeeded,
    TrainerEvent,
    parse_event,
)

log = logging.getLogger(__name__)


@dataclass
class EventRelay:
    """Tails the trainer's events.jsonl: each complete line once, as its event."""

    path: Path
    offset: int = 0
    buffer: str = ""
    # succeeded, paused or failed, once the trainer said so
    outcome: Outcome | None = None

    def read_new(self) -> list[TrainerEvent]:
        if not self.path.exists():
            return []
        with self.path.open("r", encoding="utf-8") as fh:
            fh.seek(self.offset)
            data = fh.read()
            self.offset = fh.tell()
        self.buffer += data
        lines = self.buffer.split("\n")
        self.buffer = lines.pop()  # an unfinished line waits for its end
        events = []
        for line in lines:
            if line.strip():
                try:
                    events.append(parse_event(line))
                except ValueError as exc:
                    log.warning("unreadable trainer event line %r: %s", line[:200], exc)
        return events


def relay(
    session: Session,
    row: JobRow,
    attempt: Attempt,
    events: list[TrainerEvent],
    tail: EventRelay,
    uploads: CheckpointUploads,
    started_at: float,
) -> None:
    """Write the trainer's events to the job's rows (the caller commits)."""
    job_id = attempt.job_id
    for event in events:
        match event:
            case Started():
                outcomes.training_started(session, row, event.wire(), attempt.resumed_from)
            case Progress():
                outcomes.progressed(
                    row,
                    event.step,
                    event.total_steps,
                    event.epoch,
                    attempt.resumed_from,
                    started_at,
                )
            case Log() | Eval():
                wire = event.wire()
                values = {k: v for k, v in wire.items() if k not in ("type", "step", "epoch")}
                kind = "train" if isinstance(event, Log) else "eval"
                outcomes.metrics_logged(
                    session, job_id, kind, event.step, event.epoch, values, wire
                )
            case Checkpoint():
                uploads.submit(event)
            case EarlyStopped():
                outcomes.noted(session, job_id, event.message, data=event.wire())
            case Message():
                outcomes.noted(session, job_id, event.message, level=event.level)
            case Succeeded() | Paused() | Failed():
                tail.outcome = event


def record_uploads(
    session: Session, row: JobRow, attempt: Attempt, uploads: CheckpointUploads
) -> int:
    """Write the rows of the finished uploads; returns how many (forgotten on commit)."""
    done = uploads.finished()
    for step, result in done:
        if isinstance(result, BaseException):
            log.error("storing checkpoint %s of %s failed: %r", step, row.id, result)
            outcomes.checkpoint_lost(session, row.id, step, result)
            continue
        outcomes.checkpoint_stored(
            session,
            row,
            attempt.number,
            step=result.step,
            epoch=result.epoch,
            metrics=result.metrics,
            best_step=result.best_step,
            artifact_key=result.artifact_key,
            state_key=result.state_key,
        )
    return len(done)
