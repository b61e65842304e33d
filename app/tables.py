"""ORM tables. Every state change of a job goes through app/jobs/state.py."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    insert,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.ids import new_id


def now() -> int:
    return int(time.time())


def now_ns() -> int:
    return time.time_ns()


def default_project_id(context: Any) -> str:
    """A row inserted without a project (a seed script, a tool) belongs to the "default"
    project, as the 0005 migration's backfill does. Requests always set the caller's."""
    projects = ProjectRow.__table__
    conn = context.connection
    found = conn.execute(select(projects.c.id).where(projects.c.name == "default")).scalar()
    if found is None:
        found = new_id("proj")
        conn.execute(insert(ProjectRow).values(id=found, name="default", created_at=now()))
    return str(found)


class FileRow(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # list order: seconds (created_at, as OpenAI shows it) are too coarse to page by
    created_ns: Mapped[int] = mapped_column(BigInteger, default=now_ns, index=True)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    storage_key: Mapped[str] = mapped_column(String(512))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # the owning project (app/auth.py): every query a request makes filters by it
    project_id: Mapped[str | None] = mapped_column(
        String(64), nullable=True, index=True, default=default_project_id
    )


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(255))
    task: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=now_ns, index=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    method: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training_type: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the best evaluation by the job's selection metric (None when it exports the final model)
    best_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the exported checkpoint's evaluation
    final_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the exported checkpoint's step and why that one (app/jobs/spec.py ResultReason)
    result_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # rows of the validation set the evaluations ran on (known once training started)
    n_validation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # execution bookkeeping: the lease a worker holds while it runs the job
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # workers that stopped answering while they held the lease (the reconciler counts them;
    # at max_workers_lost the job fails rather than kill yet another worker)
    workers_lost: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # another job's checkpoint (ftckpt-...) whose weights this job starts from
    from_checkpoint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the Hub commit of a pulled base model (app/hub/pull.py), so that the job can be redone
    model_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the owning project (app/auth.py): every query a request makes filters by it
    project_id: Mapped[str | None] = mapped_column(
        String(64), nullable=True, index=True, default=default_project_id
    )


class JobEventRow(Base):
    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class JobMetricRow(Base):
    __tablename__ = "job_metrics"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "train" or "eval"
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class FineTunedModelRow(Base):
    __tablename__ = "fine_tuned_models"

    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    base_model: Mapped[str] = mapped_column(String(255))
    task: Mapped[str] = mapped_column(String(32))
    training_type: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))  # "adapter" or "full"
    artifact_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # the owning project (app/auth.py): every query a request makes filters by it
    project_id: Mapped[str | None] = mapped_column(
        String(64), nullable=True, index=True, default=default_project_id
    )


class DeploymentRow(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    load_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # an adapter's share: the base copy it runs on with every other adapter of that base
    base_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # usage through the deployment, flushed from each API process's counts (usage.py)
    requests_served: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # the owning project (app/auth.py): every query a request makes filters by it
    project_id: Mapped[str | None] = mapped_column(
        String(64), nullable=True, index=True, default=default_project_id
    )


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # usage through its deployments and direct model calls, flushed from each API process's
    # counts (app/deployments/usage.py)
    requests_served: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    # sha256 of the key: keys are 240-bit random strings, so a fast hash is enough, and the
    # key itself is shown once and never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class JobCheckpointRow(Base):
    """A checkpoint in the artifact store: a servable model (artifact_key) and the trainer
    state that resumes from it (state_key). Written by the worker once both are uploaded."""

    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_job_checkpoints_job_id_step"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    # ft:<base>:<suffix>:<job>:ckpt-step-N, the name to deploy or predict with
    model_name: Mapped[str] = mapped_column(String(600), unique=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_key: Mapped[str] = mapped_column(String(512))
    state_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # the best evaluated step when this checkpoint was written (kept beside it on resume)
    best_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class EvaluationRow(Base):
    """A model (and optionally a second one) scored on a file, on a worker."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(512))
    compare_to: Mapped[str | None] = mapped_column(String(512), nullable=True)
    file_id: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=now_ns, index=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    compare_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    difference: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the worker running it holds a lease, renewed while it runs; an expired one can be taken
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # when it was last sent to the workers, and how many of them were lost running it
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    workers_lost: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the owning project (app/auth.py): every query a request makes filters by it
    project_id: Mapped[str | None] = mapped_column(
        String(64), nullable=True, index=True, default=default_project_id
    )


class ModelPullRow(Base):
    """A pull of a base model from the Hugging Face Hub (app/hub/): its pinned commit and
    its progress, written by the thread that downloads it."""

    __tablename__ = "model_pulls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    revision: Mapped[str] = mapped_column(String(255))
    sha: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    # queued, running, succeeded, failed
    status: Mapped[str] = mapped_column(String(16))
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    done_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    total_files: Mapped[int] = mapped_column(Integer, default=0)
    done_files: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # refreshed with each progress write: a running pull that stops refreshing was lost
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class SweepRow(Base):
    """A hyperparameter search (app/sweeps): its trials are ordinary jobs; Optuna's study of
    the same name, in its own tables (app/sweeps/study.py), samples and prunes them."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=now_ns, index=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # the body of POST /v1/fine_tuning/jobs every trial starts from
    base_job: Mapped[dict[str, Any]] = mapped_column(JSON)
    search_space: Mapped[dict[str, Any]] = mapped_column(JSON)
    objective: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_trials: Mapped[int] = mapped_column(Integer)
    max_parallel: Mapped[int] = mapped_column(Integer)
    sampler: Mapped[str] = mapped_column(String(16))
    pruner: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(BigInteger)
    study_name: Mapped[str] = mapped_column(String(128))
    best_trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # the sweep driver pass that holds the sweep until then (one driver per sweep at a time)
    driven_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class SweepTrialRow(Base):
    __tablename__ = "sweep_trials"
    __table_args__ = (
        UniqueConstraint("sweep_id", "number", name="uq_sweep_trials_sweep_id_number"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    # Optuna's trial number (0, 1, ...) and its storage id (for report / should_prune)
    number: Mapped[int] = mapped_column(Integer)
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # running, complete, pruned, failed, cancelled
    state: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the job's latest evaluation step told to Optuna
    reported_step: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    intermediate: Mapped[list[list[float]]] = mapped_column(JSON, default=list)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SweepEventRow(Base):
    __tablename__ = "sweep_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
