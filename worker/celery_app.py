"""Celery configuration. Torch-free: the API imports this to enqueue by task name.

The broker only carries "job X is ready" wake-ups; the database is the source of truth, so a
lost or duplicated message never loses or duplicates a job (tasks claim before they run).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

RUN_JOB = "tunery.run_job"

# Longer than any job: a message redelivered while its job still runs would only find the
# claim taken, but there is no point in redelivering at all; the reconciler handles loss.
VISIBILITY_TIMEOUT = 7 * 24 * 3600


def broker_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            # kombu's default of 1 s would add up to a second before every job starts
            "polling_interval": 0.2,
            "store_processed": False,
            "control_folder": str(folder / "control"),
        }
    return {"visibility_timeout": VISIBILITY_TIMEOUT}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("tunery", broker=settings.broker_url)
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_enable_remote_control=not settings.broker_url.startswith("filesystem"),
        broker_heartbeat=0,
    )
    return app


def enqueue_job(app: Celery, job_id: str) -> None:
    app.send_task(RUN_JOB, args=[job_id])
