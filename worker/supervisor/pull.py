"""A job's base model pulled from the Hub by the worker that claimed it, when this worker's
TUNERY_MODELS_DIR does not have it: the job pinned the commit (jobs.model_sha) when it was
created (TUNERY_HUB_AUTO_PULL on the API, or a base pulled into another worker's folder).
The progress goes to the job's events. Each database write is its own short session; the
Hub is only called between them.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.failures import APIError, Failure
from app.hub import pull
from app.jobs import repository as jobs_repo
from app.settings import Settings
from app.tables import JobRow
from worker.supervisor.lease import Lease

# a progress event at most this often: a job's event list is read by people
EVENT_SECONDS = 5.0


def pull_base(
    settings: Settings,
    make_session: sessionmaker[Session],
    lease: Lease,
    row: JobRow,
    every: float = EVENT_SECONDS,
) -> Path:
    """Pull the job's base model at its pinned commit; the folder, or a Failure."""
    assert row.model_sha is not None
    models_dir = settings.models_dir

    def event(message: str, data: dict[str, object]) -> None:
        with make_session() as session:
            jobs_repo.add_event(session, lease.owned(session).id, message, data={"pull": data})
            session.commit()

    try:
        found = pull.plan(models_dir, row.model, row.model_sha)
        mb = found.total_bytes / 1e6
        event(
            f"Pulling {row.model} at {found.sha} from the Hub: {len(found.files)} files, "
            f"{mb:.1f} MB.",
            {"model": row.model, "sha": found.sha, "total_bytes": found.total_bytes},
        )
        last = [time.monotonic()]

        def progress(done_bytes: int, done_files: int) -> None:
            if time.monotonic() - last[0] < every:
                return
            last[0] = time.monotonic()
            event(
                f"Pulling {row.model}: {done_bytes / 1e6:.1f} of {mb:.1f} MB, "
                f"{done_files} of {len(found.files)} files.",
                {
                    "model": row.model,
                    "downloaded_bytes": done_bytes,
                    "total_bytes": found.total_bytes,
                    "downloaded_files": done_files,
                    "total_files": len(found.files),
                },
            )

        folder = pull.download(models_dir, found, progress, every=min(every, 1.0))
    except APIError as exc:
        raise Failure(exc.code or "pull_failed", exc.message, "model") from exc
    except OSError as exc:
        raise Failure(
            "pull_failed",
            f"Writing {row.model} into TUNERY_MODELS_DIR ({models_dir}) on this worker failed: "
            f"{exc}. Check its free space and permissions, and retry the job.",
            "model",
        ) from exc
    event(
        f"Pulled {row.model} at {found.sha} into TUNERY_MODELS_DIR.",
        {"model": row.model, "sha": found.sha, "downloaded_bytes": found.total_bytes},
    )
    return folder
