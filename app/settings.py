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
    models_dir: Path | None = None
    inference_url: str = "http://127.0.0.1:8001"
    queue: str = "tunery"
    allow_hub: bool = False
    max_upload_bytes: int = 1024**3
    # an uploaded fine-tuning file with fewer examples is refused (OpenAI's minimum is 10)
    min_training_examples: int = Field(default=10, ge=1)
    # how long a worker's claim on a job lasts without a heartbeat
    lease_seconds: int = 60
    heartbeat_seconds: float = 5.0
    # jobs queued longer than this without a claim are enqueued again (a lost message)
    requeue_after_seconds: int = 120
    reconcile_every_seconds: float = 15.0
    # one log line per HTTP request costs ~15% of a status GET; off unless asked for
    access_log: bool = False
    # inference server model cache: how many models stay loaded, and a memory budget
    inference_max_models: int = 4
    inference_memory_budget_bytes: int | None = None
    # a worker process claims at most one job at a time; torch threads for the trainer
    trainer_threads: int | None = None

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'tunery.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = f"file://{self.data_dir / 'artifacts'}"
        if self.models_dir is None:
            self.models_dir = self.data_dir / "models"
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

    @property
    def base_models_dir(self) -> Path:
        assert self.models_dir is not None
        return self.models_dir


@lru_cache
def get_settings() -> Settings:
    return Settings()
