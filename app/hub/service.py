"""Pulls of base models from the Hub as the API runs them: a row per pull with its pinned
commit and its progress, a thread that downloads (app/hub/pull.py) and writes the progress
in short transactions, and the rules for removing a pulled base.

Base models are shared by every project, so pulling and removing one is for the admin
project's keys only (TUNERY_ADMIN_PROJECT; the one project of an instance without keys).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.auth import Principal
from app.failures import APIError, not_found
from app.hub import pull
from app.ids import new_id
from app.jobs.state import ACTIVE
from app.models.registry import resolve_base_model
from app.tables import (
    DeploymentRow,
    FineTunedModelRow,
    JobRow,
    ModelPullRow,
    ProjectRow,
    now,
)

log = logging.getLogger(__name__)

# a running pull refreshes updated_at at least this often while its process lives
STALE_SECONDS = 60
UNFINISHED = ("queued", "running")


def pull_public(row: ModelPullRow) -> dict[str, Any]:
    status = row.status
    error = row.error
    if status in UNFINISHED and row.updated_at < now() - STALE_SECONDS:
        status = "failed"  # the process that ran it stopped; a new pull resumes it
        error = {
            "code": "pull_lost",
            "message": f"The process pulling {row.model} stopped; pull it again to resume.",
        }
    return {
        "id": row.id,
        "object": "model.pull",
        "model": row.model,
        "revision": row.revision,
        "sha": row.sha,
        "task": row.task,
        "status": status,
        "total_bytes": row.total_bytes,
        "downloaded_bytes": row.done_bytes,
        "total_files": row.total_files,
        "downloaded_files": row.done_files,
        "error": error,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
    }


def check_admin(session: Session, principal: Principal, admin_project: str) -> None:
    project = session.get(ProjectRow, principal.project_id)
    if project is None or project.name != admin_project:
        raise APIError(
            403,
            "Base models are shared by every project, so only keys of the admin project "
            f"('{admin_project}', TUNERY_ADMIN_PROJECT) may pull or remove them; ask its "
            "operator, or use a key of that project.",
            code="admin_only",
        )


def running_pull(session: Session, model: str) -> ModelPullRow | None:
    return session.scalar(
        select(ModelPullRow)
        .where(
            ModelPullRow.model == model,
            ModelPullRow.status.in_(UNFINISHED),
            ModelPullRow.updated_at >= now() - STALE_SECONDS,
        )
        .order_by(ModelPullRow.created_at.desc())
        .limit(1)
    )


def get_pull(session: Session, pull_id: str) -> ModelPullRow:
    row = session.get(ModelPullRow, pull_id)
    if row is None:
        raise not_found("model pull", pull_id, param="pull_id")
    return row


def recent_pulls(session: Session, limit: int = 20) -> list[ModelPullRow]:
    return list(
        session.scalars(select(ModelPullRow).order_by(ModelPullRow.created_at.desc()).limit(limit))
    )


def record(session: Session, found: pull.Plan) -> ModelPullRow:
    row = ModelPullRow(
        id=new_id("pull"),
        model=found.model,
        revision=found.revision,
        sha=found.sha,
        task=found.task,
        status="queued",
        total_bytes=found.total_bytes,
        done_bytes=0,
        total_files=len(found.files),
        done_files=0,
    )
    session.add(row)
    session.flush()
    return row


def start(
    make_session: sessionmaker[Session], models_dir: Path, pull_id: str, found: pull.Plan
) -> threading.Thread:
    thread = threading.Thread(
        target=run,
        args=(make_session, models_dir, pull_id, found),
        name=f"pull-{pull_id}",
        daemon=True,
    )
    thread.start()
    return thread


def run(
    make_session: sessionmaker[Session], models_dir: Path, pull_id: str, found: pull.Plan
) -> None:
    """Download a recorded pull, writing its progress; never raises."""

    def write(**values: Any) -> None:
        with make_session() as session:
            row = session.get(ModelPullRow, pull_id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)
                row.updated_at = now()
                session.commit()

    def progress(done_bytes: int, done_files: int) -> None:
        write(status="running", done_bytes=done_bytes, done_files=done_files)

    error: dict[str, Any] | None = None
    try:
        write(status="running")
        pull.download(models_dir, found, progress)
    except APIError as exc:
        error = {"code": exc.code or "pull_failed", "message": exc.message}
    except OSError as exc:
        error = {
            "code": "pull_failed",
            "message": f"Writing {found.model} into TUNERY_MODELS_DIR ({models_dir}) failed: "
            f"{exc}. Check its free space and permissions, and pull again (finished files "
            "are kept).",
        }
    except Exception as exc:  # the row must not stay "running": say what happened
        log.exception("pull %s of %s failed", pull_id, found.model)
        error = {"code": "pull_failed", "message": f"{type(exc).__name__}: {exc}"}
    try:
        if error is None:
            write(status="succeeded", finished_at=now())
        else:
            write(status="failed", error=error, finished_at=now())
    except Exception:
        log.exception("recording the end of pull %s failed", pull_id)


def users(session: Session, model: str) -> list[str]:
    """What still needs a base model: unfinished jobs, fine-tuned models, deployments."""
    jobs = session.scalars(
        select(JobRow.id).where(JobRow.model == model, JobRow.status.in_(ACTIVE))
    ).all()
    tuned = session.scalars(
        select(FineTunedModelRow.id).where(
            FineTunedModelRow.base_model == model, FineTunedModelRow.deleted.is_(False)
        )
    ).all()
    # deployments of the base itself, and of models tuned from it
    deployments = session.scalars(
        select(DeploymentRow.id).where(
            DeploymentRow.model.in_([model, *tuned]), DeploymentRow.deleted.is_(False)
        )
    ).all()
    return [
        *(f"job {j}" for j in jobs),
        *(f"model {t}" for t in tuned),
        *(f"deployment {d}" for d in deployments),
    ]


def check_replaceable(session: Session, models_dir: Path, found: pull.Plan) -> None:
    """A pull at another commit replaces the folder: not under what still needs it."""
    base = resolve_base_model(models_dir, found.model)
    if base is not None and base.sha is not None and base.sha != found.sha:
        check_unused(session, found.model, f"replaced by commit {found.sha} ({found.revision})")


def check_unused(session: Session, model: str, action: str = "removed") -> None:
    needed = users(session, model)
    if needed:
        shown = ", ".join(needed[:10]) + (
            f" and {len(needed) - 10} more" if len(needed) > 10 else ""
        )
        raise APIError(
            409,
            f"Base model {model} is still needed by {shown}, so it cannot be {action}; delete "
            "those (or wait for the jobs to finish) and try again.",
            param="model",
            code="model_in_use",
        )


def pull_in_background(
    make_session: sessionmaker[Session], models_dir: Path, found: pull.Plan
) -> str:
    """Start a pull of `found` (or join the one running for the model); its id."""
    with make_session() as session:
        running = running_pull(session, found.model)
        if running is not None:
            return running.id
        pull_id = record(session, found).id
        session.commit()
    start(make_session, models_dir, pull_id, found)
    return pull_id


def wait_for(
    make_session: sessionmaker[Session], pull_id: str, every: float = 0.5
) -> dict[str, Any]:
    """Block until the pull ends (or is lost); its public object. Each look is a short
    session of its own."""
    while True:
        with make_session() as session:
            state = pull_public(get_pull(session, pull_id))
        if state["status"] not in UNFINISHED:
            return state
        time.sleep(every)
