"""Job rules a worker applies: what each thing an attempt reports does to the job's rows,
and what the user reads about it. The worker (worker/supervisor) decides when to call these
and owns the session and the lease; the rules and the messages live here, beside the
request rules in service.py, so every job rule is in app/jobs.

Each function takes the job's row as the caller owns it (app.jobs.state.owned) and neither
commits nor calls another process.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from app.ids import new_id
from app.jobs import repository, state
from app.jobs.service import checkpoint_model_name, model_name
from app.jobs.spec import ResultReason
from app.tables import FineTunedModelRow, JobCheckpointRow, JobRow


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def attempt_started(session: Session, job_id: str, number: int, host: str) -> None:
    repository.add_event(session, job_id, f"Attempt {number} started on {host}.")


def files_validated(session: Session, row: JobRow) -> None:
    """validating_files: the files passed their second check; the job runs."""
    state.files_checked(row)
    repository.add_event(session, row.id, "Files validated; training starts.")


def resuming(session: Session, row: JobRow, latest: JobCheckpointRow) -> None:
    """An attempt continues from the job's latest stored checkpoint: what was logged after it
    is dropped (it is logged again)."""
    repository.clear_metrics(session, row.id, after_step=latest.step)
    row.progress = {**(row.progress or {}), "step": latest.step}
    repository.add_event(
        session,
        row.id,
        f"Resuming from checkpoint step-{latest.step} ({latest.model_name}); metrics after "
        "that step are dropped and logged again.",
        data={"resumed_from_step": latest.step, "checkpoint": latest.id},
    )


def restarting(session: Session, row: JobRow) -> None:
    """A later attempt with no checkpoint to resume from starts over: so do the metrics."""
    repository.clear_metrics(session, row.id)


def training_started(
    session: Session, row: JobRow, started: dict[str, Any], resumed_from: int
) -> None:
    """`started` is the trainer's started event as written (docs/internals.md)."""
    row.progress = {
        "step": resumed_from,
        "total_steps": started.get("total_steps"),
        "epoch": (row.progress or {}).get("epoch", 0.0),
    }
    n_validation = started.get("n_validation")
    if isinstance(n_validation, int):
        row.n_validation = n_validation
    repository.add_event(
        session,
        row.id,
        f"Training started: {started.get('n_train')} training and "
        f"{started.get('n_validation')} validation examples, "
        f"{started.get('total_steps')} steps, "
        f"{started.get('trainable_parameters')} of {started.get('total_parameters')} "
        "parameters trainable.",
        data=started,
    )


def progressed(
    row: JobRow,
    step: int,
    total_steps: int | None,
    epoch: float | None,
    resumed_from: int,
    started_at: float,
) -> None:
    """After an optimizer step: the progress, and the finish estimated from this attempt's
    pace so far."""
    row.progress = {"step": step, "total_steps": total_steps, "epoch": epoch}
    done = step - resumed_from
    if total_steps and done > 0:
        elapsed = time.time() - started_at
        row.estimated_finish = int(time.time() + elapsed / done * (int(total_steps) - step))


def metrics_logged(
    session: Session,
    job_id: str,
    kind: str,
    step: int,
    epoch: float | None,
    values: dict[str, Any],
    event: dict[str, Any],
) -> None:
    """A training log (`kind` "train") or an evaluation ("eval"): a metrics row and an event."""
    repository.add_metric(session, job_id, kind, step, epoch, values)
    if kind == "train":
        message = f"Step {step}: train_loss={_fmt(values.get('train_loss'))}"
    else:
        shown = ", ".join(
            f"{k}={_fmt(v)}"
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
        message = f"Evaluation at step {step}: {shown}"
    repository.add_event(session, job_id, message, type="metrics", data=event)


def noted(
    session: Session,
    job_id: str,
    message: str,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    """Something the trainer says to the user (a warning, early stopping)."""
    repository.add_event(session, job_id, message, level=level, data=data)


def checkpoint_stored(
    session: Session,
    row: JobRow,
    attempt: int,
    *,
    step: int,
    epoch: float | None,
    metrics: dict[str, Any],
    best_step: int | None,
    artifact_key: str,
    state_key: str,
) -> JobCheckpointRow:
    """A checkpoint is in the artifact store: its row (a step written again after a resume
    updates it) and an event naming the model it can be served as."""
    stored = repository.save_checkpoint(
        session,
        JobCheckpointRow(
            id=new_id("ftckpt"),
            job_id=row.id,
            step=step,
            epoch=epoch,
            model_name=checkpoint_model_name(row, step),
            metrics=metrics,
            artifact_key=artifact_key,
            state_key=state_key,
            best_step=best_step,
            attempt=attempt,
        ),
    )
    session.flush()
    repository.add_event(
        session,
        row.id,
        f"Checkpoint at step {step} stored: {stored.model_name}.",
        data={"checkpoint": stored.id, "step": step, "metrics": metrics},
    )
    return stored


def checkpoint_lost(session: Session, job_id: str, step: int, error: BaseException) -> None:
    repository.add_event(
        session,
        job_id,
        f"Checkpoint at step {step} could not be stored: {error}. Training goes on; a resume "
        "would start from an earlier checkpoint.",
        level="warning",
    )


def succeeded(
    session: Session,
    row: JobRow,
    *,
    artifact_key: str,
    model_format: str,
    trained_tokens: int,
    metrics: dict[str, Any],
    result_step: int,
    result_reason: ResultReason,
    best_step: int | None,
    stopped_early: dict[str, Any] | None,
) -> str:
    """The trained model (the checkpoint of result_step, for result_reason) is stored under
    artifact_key: the fine-tuned model exists and the job succeeded. Returns its name."""
    name = model_name(row)
    session.add(
        FineTunedModelRow(
            id=name,
            project_id=row.project_id,
            job_id=row.id,
            base_model=row.model,
            task=row.task,
            training_type=str(row.training_type.get("type")),
            format=model_format,
            artifact_key=artifact_key,
        )
    )
    state.transition(
        row,
        "succeeded",
        fine_tuned_model=name,
        trained_tokens=trained_tokens,
        final_metrics=metrics,
        best_step=best_step,
        result_step=result_step,
        result_reason=result_reason,
        estimated_finish=None,
    )
    if row.progress.get("total_steps"):
        row.progress = {**row.progress, "step": row.progress["total_steps"]}
    repository.add_event(
        session,
        row.id,
        f"Job succeeded: the fine-tuned model is {name}, {result_description(row)}.",
        data={
            "fine_tuned_model": name,
            "metrics": metrics,
            "result_step": result_step,
            "result_reason": result_reason,
            "best_step": best_step,
            "stopped_early": stopped_early,
        },
    )
    return name


def result_description(row: JobRow) -> str:
    """Which checkpoint a succeeded job exported and why, in words."""
    step, reason = row.result_step, row.result_reason
    hyperparameters = row.hyperparameters or {}
    if reason == "final":
        return f"the final checkpoint (step {step}; set best_metric to export the best instead)"
    early = hyperparameters.get("early_stopping") or {}
    metric = hyperparameters.get("best_metric") or early.get("metric") or "eval_loss"
    because = "best_metric" if reason == "best_metric" else "early stopping is on"
    return f"the checkpoint of step {step}, the best by {metric} ({because})"


def paused(session: Session, row: JobRow, step: int) -> None:
    latest = repository.latest_checkpoint(session, row.id)
    state.paused(row)
    where = f"checkpoint step-{latest.step}" if latest else "the start"
    repository.add_event(
        session,
        row.id,
        f"Job paused at step {step}; POST /v1/fine_tuning/jobs/{row.id}/resume continues it "
        f"from {where}.",
        data={"step": step, "checkpoint": latest.id if latest else None},
    )


def failed(session: Session, row: JobRow, error: dict[str, Any]) -> None:
    """`error` is {code, message, param} (app.failures.Failure.as_error())."""
    state.transition(row, "failed", error=error, estimated_finish=None)
    repository.add_event(
        session, row.id, f"Job failed ({error['code']}): {error['message']}", level="error"
    )


def cancelled(session: Session, row: JobRow) -> None:
    state.transition(row, "cancelled", estimated_finish=None)
    repository.add_event(
        session,
        row.id,
        "Job cancelled; the trainer was stopped. Stored checkpoints stay available.",
    )
