"""The broker, as both sides see it: the task names, the Celery configuration, enqueueing,
and the watch on a broker that lost its contents.

Torch-free and the one place both sides import: the API sends tasks by name from here, and
worker/tasks.py registers its tasks under the same names on a Celery app made here. The
broker only carries "job X is ready" wake-ups; the database is the source of truth, so a
lost or duplicated message never loses or duplicates a job (tasks claim before they run).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

RUN_JOB = "tunery.run_job"
RUN_EVALUATION = "tunery.run_evaluation"


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
    # Longer than any job (TUNERY_BROKER_VISIBILITY_TIMEOUT, a week): a message delivered
    # again while its job still runs only finds the claim taken, but there is no point in
    # it; the reconciler handles lost messages. Idle workers put messages unacknowledged
    # past it back in the queue; they look often enough for a short timeout to matter.
    visibility = settings.broker_visibility_timeout
    return {
        "visibility_timeout": visibility,
        "unacked_restore_interval": max(1, min(60, visibility // 3)),
        "unacked_restore_throttle": 1,
    }


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


def enqueue_evaluation(app: Celery, evaluation_id: str) -> None:
    app.send_task(RUN_EVALUATION, args=[evaluation_id])


class BrokerWatch:
    """Notices a broker that lost what it held: restarted without persistence, flushed, or
    failed over to an empty replica. It plants a marker (a Redis key; a file beside the
    filesystem broker's queue) and looks for it on every reconciler pass: once the marker is
    gone, every message may be gone too, and the reconciler sends every waiting job again.
    Other brokers cannot be watched; there the reconciler's requeue_after_seconds applies.
    """

    def __init__(self, settings: Settings) -> None:
        self.broker_url = settings.broker_url
        self.key = f"tunery:broker-epoch:{settings.queue}"
        self.marker = settings.broker_dir / f"epoch-{settings.queue}"
        self._redis: Any = None

    def _client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.broker_url, socket_timeout=5, socket_connect_timeout=5
            )
        return self._redis

    def intact(self) -> bool:
        """False when the marker is missing (the broker is new or lost its contents);
        raises when the broker cannot be reached (the caller asks again later)."""
        if self.broker_url.startswith(("redis://", "rediss://")):
            return bool(self._client().exists(self.key))
        if self.broker_url.startswith("filesystem"):
            return self.marker.exists()
        return True

    def mark(self) -> None:
        """Plant the marker: every waiting job has been sent since the broker was new."""
        if self.broker_url.startswith(("redis://", "rediss://")):
            self._client().set(self.key, "1")
        elif self.broker_url.startswith("filesystem"):
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
