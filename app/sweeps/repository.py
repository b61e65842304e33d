"""Every query for sweeps, their trials and events."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.ids import new_id
from app.pagination import keyset
from app.tables import JobMetricRow, SweepEventRow, SweepRow, SweepTrialRow


def get(session: Session, sweep_id: str, project_id: str) -> SweepRow | None:
    return session.scalars(
        select(SweepRow).where(SweepRow.id == sweep_id, SweepRow.project_id == project_id)
    ).first()


def list_page(
    session: Session, *, project_id: str, after: str | None, limit: int
) -> list[SweepRow]:
    return keyset(
        session,
        select(SweepRow).where(SweepRow.project_id == project_id),
        id_column=SweepRow.id,
        keys=(SweepRow.created_ns, SweepRow.id),
        after=after,
        limit=limit,
        kind="sweep",
        scope=(SweepRow.project_id == project_id,),
    )


def trials(session: Session, sweep_id: str) -> list[SweepTrialRow]:
    return list(
        session.scalars(
            select(SweepTrialRow)
            .where(SweepTrialRow.sweep_id == sweep_id)
            .order_by(SweepTrialRow.number)
        )
    )


def trials_of(session: Session, sweep_ids: list[str]) -> dict[str, list[SweepTrialRow]]:
    found: dict[str, list[SweepTrialRow]] = {i: [] for i in sweep_ids}
    if sweep_ids:
        rows = session.scalars(
            select(SweepTrialRow)
            .where(SweepTrialRow.sweep_id.in_(sweep_ids))
            .order_by(SweepTrialRow.number)
        )
        for row in rows:
            found[row.sweep_id].append(row)
    return found


def evaluations_after(session: Session, job_id: str, step: int) -> list[JobMetricRow]:
    """The job's evaluations after `step`, in step order."""
    return list(
        session.scalars(
            select(JobMetricRow)
            .where(
                JobMetricRow.job_id == job_id,
                JobMetricRow.kind == "eval",
                JobMetricRow.step > step,
            )
            .order_by(JobMetricRow.step, JobMetricRow.seq)
        )
    )


def add_event(
    session: Session,
    sweep_id: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        SweepEventRow(
            id=new_id("sweepevent"), sweep_id=sweep_id, level=level, message=message, data=data
        )
    )


def list_events(
    session: Session, sweep_id: str, *, after: str | None, limit: int
) -> list[SweepEventRow]:
    """Newest first, like a job's events."""
    return keyset(
        session,
        select(SweepEventRow).where(SweepEventRow.sweep_id == sweep_id),
        id_column=SweepEventRow.id,
        keys=(SweepEventRow.seq,),
        after=after,
        limit=limit,
        kind="event of this sweep",
        scope=(SweepEventRow.sweep_id == sweep_id,),
    )


def to_drive(session: Session) -> list[str]:
    """Sweeps with work for the driver: running ones, and finished ones whose trials still
    run (a cancel that raced a pass)."""
    running = select(SweepRow.id).where(SweepRow.status == "running")
    stragglers = (
        select(SweepTrialRow.sweep_id)
        .join(SweepRow, SweepRow.id == SweepTrialRow.sweep_id)
        .where(SweepRow.status != "running", SweepTrialRow.state == "running")
    )
    return sorted(set(session.scalars(running)) | set(session.scalars(stragglers)))


def claim(session: Session, sweep_id: str, seconds: float) -> bool:
    """Hold the sweep for one driver pass (two API processes never drive it at once)."""
    now = time.time()
    result = session.execute(
        update(SweepRow)
        .where(
            SweepRow.id == sweep_id,
            or_(SweepRow.driven_until.is_(None), SweepRow.driven_until < now),
        )
        .values(driven_until=now + seconds)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def judged_by_pruner(session: Session, job_id: str) -> bool:
    """Whether the job is a running trial of a running sweep whose pruner judges its
    evaluations (its trainer then waits for each verdict)."""
    found = session.execute(
        select(SweepTrialRow.id)
        .join(SweepRow, SweepRow.id == SweepTrialRow.sweep_id)
        .where(
            SweepTrialRow.job_id == job_id,
            SweepTrialRow.state == "running",
            SweepRow.status == "running",
            SweepRow.pruner != "none",
        )
    ).first()
    return found is not None


def judged_step(session: Session, job_id: str) -> int | None:
    """The last step of the job's evaluations its sweep has judged; None when nothing will
    judge them any more (not a trial, or the trial or its sweep ended)."""
    row = session.execute(
        select(SweepTrialRow.reported_step)
        .join(SweepRow, SweepRow.id == SweepTrialRow.sweep_id)
        .where(
            SweepTrialRow.job_id == job_id,
            SweepTrialRow.state == "running",
            SweepRow.status == "running",
        )
    ).first()
    return None if row is None else int(row[0])


def awaiting_judgement(session: Session) -> list[str]:
    """Running sweeps with a pruner whose running trials have evaluations not yet judged:
    their trainers wait for the driver."""
    query = (
        select(SweepTrialRow.sweep_id)
        .join(SweepRow, SweepRow.id == SweepTrialRow.sweep_id)
        .join(JobMetricRow, JobMetricRow.job_id == SweepTrialRow.job_id)
        .where(
            SweepRow.status == "running",
            SweepRow.pruner != "none",
            SweepTrialRow.state == "running",
            JobMetricRow.kind == "eval",
            JobMetricRow.step > SweepTrialRow.reported_step,
        )
        .distinct()
    )
    return sorted(session.scalars(query))
