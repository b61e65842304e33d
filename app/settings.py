"""Configuration from TUNERY_* environment variables, with defaults that run on one machine."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNERY_", extra="ignore")

    # Everything an embedded instance keeps lives under data_dir, so two instances started in
    # two folders (or with two TUNERY_DATA_DIR values) never share state.
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / ".tunery")
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    # base models, one folder each; TUNERY_DATA_DIR/models unless set
    models_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "models")
    inference_url: str = "http://127.0.0.1:8001"
    queue: str = "tunery"
    allow_hub: bool = False
    # a job naming a Hub model that is not in TUNERY_MODELS_DIR pulls it first (its worker
    # does, into its own TUNERY_MODELS_DIR); off: the job is refused with the pull command
    hub_auto_pull: bool = False
    # keys of this project may pull and remove base models (shared by every project)
    admin_project: str = "default"
    max_upload_bytes: int = 1024**3
    # hostile-archive limits of zip uploads (task_plugins/media/archive.py), checked from the
    # zip's directory at upload, when a job starts, and when its trainer reads the archive:
    # entries, total and per-file unpacked bytes, and the unpacked/packed ratio of a file over
    # 1 MiB (images and sounds are already compressed; far beyond 200x is a zip bomb)
    archive_max_entries: int = Field(default=200_000, ge=1)
    archive_max_total_bytes: int = Field(default=32 * 1024**3, ge=1)
    archive_max_member_bytes: int = Field(default=512 * 1024**2, ge=1)
    archive_max_ratio: float = Field(default=200.0, gt=1)
    # an uploaded fine-tuning file with fewer examples is refused (OpenAI's minimum is 10)
    min_training_examples: int = Field(default=10, ge=1)
    # how long a worker's claim on a job lasts without a heartbeat
    lease_seconds: int = 60
    heartbeat_seconds: float = 5.0
    # jobs queued longer than this without a claim are enqueued again (a lost message)
    requeue_after_seconds: int = 120
    reconcile_every_seconds: float = 15.0
    # how often the API's sweep driver reports evaluations to Optuna, prunes, tells finished
    # trials and starts new ones (app/sweeps/driver.py): a pruned trial stops within this
    sweep_every_seconds: float = Field(default=2.0, gt=0)
    # how long a trial's trainer waits after each evaluation for the sweep to judge it (the
    # driver looks for new evaluations every few tenths of a second): a trial pruned there
    # stops at that step. The wait is bounded so a slow or stopped driver only slows trials
    # down; 0 lets trainers train on while the driver judges (they stop a few steps later)
    sweep_verdict_seconds: float = Field(default=10.0, ge=0)
    # where Optuna keeps its studies; empty: beside the service's own tables (SQLite: the
    # file tunery.optuna.db next to the database; Postgres: the schema `optuna`)
    sweep_storage_url: str = ""
    # a job or evaluation whose worker stopped answering this many times fails (worker_lost)
    # instead of being handed to yet another worker: something in it kills workers
    max_workers_lost: int = Field(default=3, ge=1)
    # Redis broker: a message unacknowledged this long goes back to the queue (a duplicate
    # only meets a claim that fails). Longer than any job; tests make it short.
    broker_visibility_timeout: int = Field(default=7 * 24 * 3600, ge=1)
    # an operator-chosen API key installed at start (docker compose sets it from .env)
    bootstrap_api_key: str | None = None
    bootstrap_project: str = "default"
    # per-project quotas (docs/security.md): unfinished jobs at once, and stored upload bytes
    quota_concurrent_jobs: int = Field(default=4, ge=1)
    quota_storage_bytes: int = Field(default=50 * 1024**3, ge=1)
    # requests per minute per API key (a token bucket in each API process); 0 turns it off
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # one log line per HTTP request costs ~15% of a status GET; off unless asked for
    access_log: bool = False
    # inference server model cache: how many models stay loaded (adapters count, but share
    # one copy of their base), and a memory budget
    inference_max_models: int = Field(default=16, ge=1)
    inference_memory_budget_bytes: int | None = None
    # dynamic micro-batching: inputs per forward, and the longest a request waits for others
    inference_max_batch_size: int = Field(default=32, ge=1, le=1024)
    inference_max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    # continuous batching: sequences one base decodes together; and per base, the requests
    # that may wait to start before more are refused with 503 + Retry-After
    inference_max_running: int = Field(default=32, ge=1, le=1024)
    inference_max_queue: int = Field(default=128, ge=1, le=100_000)
    # torch threads for the inference server's forwards on the CPU; unset: torch's default (a
    # thread per core). Lower it on a host whose other work keeps the cores busy (docs/serving.md)
    inference_threads: int | None = Field(default=None, ge=1, le=1024)
    # serving through the API (docs/serving.md): connections the API keeps open to the
    # inference server, requests in flight per served model in each API process (past it: a
    # 503 with Retry-After at once), how long a deployment's row and a model's serving spec
    # are trusted before they are read again, and how often usage counts are written
    inference_max_connections: int = Field(default=256, ge=1)
    serving_max_concurrency: int = Field(default=64, ge=1)
    serving_cache_seconds: float = Field(default=2.0, ge=0)
    usage_flush_seconds: float = Field(default=1.0, gt=0)
    # a worker process claims at most one job at a time; torch threads for the trainer
    trainer_threads: int | None = None
    # trainers and evaluations forked from a process that already imported torch (app/zygote.py)
    warm_start: bool = True

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'tunery.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = f"file://{self.data_dir / 'artifacts'}"
        self.models_dir = self.models_dir.expanduser().resolve()
        return self

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def work_dir(self) -> Path:
        """Scratch space of the worker: job work dirs, downloaded artifacts."""
        return self.data_dir / "work"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()
