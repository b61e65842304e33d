"""result checkpoint: a job says which checkpoint it exported (result_step), why
(result_reason) and how many validation rows it had (n_validation); the default export
becomes the final model, so existing jobs are written down as what they were

Until this revision every job exported the best evaluation by best_metric (default
eval_loss), and early stopping's min_delta was in the metric's units. From now on a job
without best_metric or early stopping exports its final model, and min_delta is relative by
default. Existing rows keep meaning what they meant:

- hyperparameters.best_metric is set to "eval_loss" where a row lacks it (the old default);
- early_stopping gets "relative": false (its min_delta stays absolute);
- a job that exported a model gets result_step = best_step and result_reason "best_metric";
- n_validation comes from the job's last "Training started" event, where there is one.

Revision ID: 08
Revises: 0013
Create Date: 2026-11-29 19:30:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "08"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("hyperparameters", sa.JSON),
    sa.column("fine_tuned_model", sa.String),
    sa.column("best_step", sa.Integer),
    sa.column("result_step", sa.Integer),
    sa.column("result_reason", sa.String),
    sa.column("n_validation", sa.Integer),
)
_events = sa.table(
    "job_events",
    sa.column("seq", sa.Integer),
    sa.column("job_id", sa.String),
    sa.column("message", sa.Text),
    sa.column("data", sa.JSON),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("result_reason", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("n_validation", sa.Integer(), nullable=True))
    bind = op.get_bind()
    validation_rows = _validation_rows(bind)
    rows = bind.execute(
        sa.select(_jobs.c.id, _jobs.c.hyperparameters, _jobs.c.fine_tuned_model, _jobs.c.best_step)
    ).all()
    for job_id, hyperparameters, fine_tuned_model, best_step in rows:
        values: dict[str, Any] = {"hyperparameters": _as_before(hyperparameters)}
        if fine_tuned_model is not None and best_step is not None:
            values["result_step"] = best_step
            values["result_reason"] = "best_metric"
        if job_id in validation_rows:
            values["n_validation"] = validation_rows[job_id]
        bind.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(**values))


def _as_before(hyperparameters: dict[str, Any] | None) -> dict[str, Any]:
    """A job's hyperparameters with the old defaults written out."""
    updated = dict(hyperparameters or {})
    if updated.get("best_metric") is None:
        updated["best_metric"] = "eval_loss"
    early = updated.get("early_stopping")
    if isinstance(early, dict) and "relative" not in early:
        updated["early_stopping"] = {**early, "relative": False}
    return updated


def _validation_rows(bind: sa.engine.Connection) -> dict[str, int]:
    """Each job's validation rows, from its last "Training started" event."""
    found: dict[str, int] = {}
    events = bind.execute(
        sa.select(_events.c.job_id, _events.c.data)
        .where(_events.c.message.like("Training started:%"))
        .order_by(_events.c.seq)
    )
    for job_id, data in events:
        n_validation = (data or {}).get("n_validation")
        if isinstance(n_validation, int) and not isinstance(n_validation, bool):
            found[job_id] = n_validation
    return found


def downgrade() -> None:
    """Back to the old meaning as nearly as it goes: the old code always selects a best
    checkpoint (best_metric null becomes eval_loss) and knows no relative min_delta."""
    bind = op.get_bind()
    for job_id, hyperparameters in bind.execute(
        sa.select(_jobs.c.id, _jobs.c.hyperparameters)
    ).all():
        updated = dict(hyperparameters or {})
        if updated.get("best_metric") is None:
            updated["best_metric"] = "eval_loss"
        early = updated.get("early_stopping")
        if isinstance(early, dict):
            updated["early_stopping"] = {k: v for k, v in early.items() if k != "relative"}
        bind.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(hyperparameters=updated))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("n_validation")
        batch.drop_column("result_reason")
        batch.drop_column("result_step")
