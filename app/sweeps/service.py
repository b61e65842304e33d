"""Sweep rules: validation at create time, cancel, and `advance`, the one function that
moves a sweep on (called at create time and by the driver, app/sweeps/driver.py).

A trial is an ordinary fine-tuning job. Optuna (ask/tell, its RDB storage) samples its
parameters and its pruner judges its evaluations; Optuna's heartbeat does not work with
ask/tell, so the job's own lifecycle decides the trial's: the reconciler requeues a job whose
worker was lost and the trial waits for it; a job that fails is told FAIL; a job that
succeeds is told its objective. Every pass also tells FAIL any Optuna trial left RUNNING
with no row of ours (an ask whose transaction did not commit), so no trial runs forever.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Literal

import optuna
from optuna.trial import TrialState
from sqlalchemy.orm import Session

import task_plugins
from app.failures import APIError, not_found
from app.ids import new_id
from app.jobs import service as jobs
from app.jobs import state as job_state
from app.jobs.schemas import JobCreate
from app.models.registry import resolve_base_model
from app.settings import Settings
from app.sweeps import repository, space, study
from app.sweeps.schemas import SweepCreate
from app.tables import FileRow, JobRow, SweepRow, SweepTrialRow

log = logging.getLogger(__name__)

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
# how often a trial evaluates for the pruner when its job leaves it to the epoch ends
PRUNING_EVALUATIONS_PER_EPOCH = 2
PRUNING_EVALUATIONS = 6


def _storage_url(settings: Settings) -> str:
    return study.storage_url(settings.database_url, settings.sweep_storage_url)


def _base_job(request: SweepCreate, metric: str) -> dict[str, Any]:
    """The request's job as every trial starts from it; its exported checkpoint is picked by
    the sweep's objective unless the job names its own best_metric."""
    base = space.job_body(request.job.model_dump(exclude_unset=True), {})
    hyper = base.setdefault("method", {"type": "supervised"}).setdefault("supervised", {})
    hyper = hyper.setdefault("hyperparameters", {})
    hyper.setdefault("best_metric", metric)
    return base


def _refused(session: Session, settings: Settings, body: dict[str, Any], project_id: str) -> str:
    """What the job rules say about this job body ("" when nothing): create_job runs in a
    transaction of its own that is rolled back, so nothing is kept."""
    trial = Session(bind=session.get_bind())
    try:
        jobs.create_job(
            trial, settings.models_dir, JobCreate.model_validate(body), project_id=project_id
        )
    except APIError as exc:
        return exc.message
    finally:
        trial.rollback()
        trial.close()
    return ""


def create_sweep(
    session: Session, settings: Settings, request: SweepCreate, *, project_id: str
) -> SweepRow:
    dims = {space.normalized_path(p): d for p, d in request.search_space.items()}
    for path, dim in dims.items():
        space.check_path(path)
        space.check_dimension(path, dim)
    base_model = resolve_base_model(settings.models_dir, request.job.model)
    task = base_model.task if base_model is not None else None
    metric = request.objective.metric
    if task is not None:
        metrics = task_plugins.get(task).metrics
        if metric not in metrics.selectable:
            raise APIError(
                400,
                f"objective.metric '{metric}' is not a {task} metric; use one of "
                f"{', '.join(metrics.selectable)}.",
                param="objective.metric",
            )
        lower = metric in metrics.lower_is_better
    else:
        lower = metric == "eval_loss"
    direction: Literal["maximize", "minimize"] = request.objective.direction or (
        "minimize" if lower else "maximize"
    )
    base = _base_job(request, metric)
    problem = _refused(session, settings, base, project_id)
    if problem:
        raise APIError(400, f"job: {problem}", param="job", code="invalid_job")
    for path, dim in dims.items():
        for value in space.candidates(dim):
            body = space.job_body(base, {path: value})
            space.checked_job(path, value, body)
            problem = _refused(session, settings, body, project_id)
            if problem:
                raise space.bad(
                    path, f"the value {value!r} makes a job the service refuses: {problem}"
                )
    if request.sampler == "grid":
        size = study.grid_size(dims)
        if request.n_trials > size:
            raise APIError(
                400,
                f"n_trials is {request.n_trials} but the grid holds {size} combinations; set "
                f"n_trials to at most {size}.",
                param="n_trials",
            )
    quota = settings.quota_concurrent_jobs
    if request.max_parallel > quota:
        raise APIError(
            400,
            f"max_parallel is {request.max_parallel} but a project runs at most {quota} jobs "
            f"at a time (TUNERY_QUOTA_CONCURRENT_JOBS); set max_parallel to {quota} or less.",
            param="max_parallel",
        )
    sweep_id = new_id("sweep")
    row = SweepRow(
        id=sweep_id,
        project_id=project_id,
        status="running",
        base_job=base,
        search_space={p: d.model_dump() for p, d in dims.items()},
        objective={"metric": metric, "direction": direction},
        n_trials=request.n_trials,
        max_parallel=request.max_parallel,
        sampler=request.sampler,
        pruner=request.pruner,
        seed=request.seed if request.seed is not None else random.randint(0, 2**31 - 1),
        study_name=sweep_id,
        cancel_requested=False,
        driven_until=time.time() + 60,
    )
    study.create_study(_storage_url(settings), sweep_id, direction)
    session.add(row)
    session.flush()
    repository.add_event(
        session,
        sweep_id,
        f"Sweep created: {request.n_trials} trials, {request.max_parallel} at a time, "
        f"{request.sampler} sampler, {request.pruner} pruner, {direction} {metric}.",
    )
    return row


def get_sweep(session: Session, sweep_id: str, project_id: str) -> SweepRow:
    row = repository.get(session, sweep_id, project_id)
    if row is None:
        raise not_found("sweep", sweep_id, param="sweep_id")
    return row


def _dimensions(
    row: SweepRow,
) -> dict[str, space.Uniform | space.LogUniform | space.IntRange | space.Choice]:
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(space.Dimension)
    return {path: adapter.validate_python(raw) for path, raw in row.search_space.items()}


def _study(settings: Settings, row: SweepRow, asked: int | None = None) -> optuna.Study:
    """The sweep's study: with the sweep's sampler to ask the next trial (`asked`: the trials
    asked so far), else with a sampler that only judges; always with its pruner."""
    sampler = (
        study.judging_sampler()
        if asked is None
        else study.make_sampler(row.sampler, _dimensions(row), row.n_trials, row.seed, asked)
    )
    return study.load_study(
        _storage_url(settings),
        row.study_name,
        sampler=sampler,
        pruner=study.make_pruner(row.pruner, row.n_trials),
    )


def _end_trial(
    optuna_study: optuna.Study,
    trial: SweepTrialRow,
    new_state: str,
    *,
    value: float | None = None,
    error: str | None = None,
) -> None:
    """Tell Optuna how the trial ended and write it on the trial's row."""
    if new_state == "complete" and value is not None:
        optuna_study.tell(trial.number, value, skip_if_finished=True)
    elif new_state == "pruned":
        optuna_study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        optuna_study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    trial.state = new_state
    trial.value = value
    trial.error = error
    trial.finished_at = int(time.time())


def _stop_job(session: Session, job: JobRow, why: str) -> None:
    if job.status in job_state.TERMINAL:
        return
    jobs.cancel_job(session, job.id, job.project_id or "")
    from app.jobs import repository as job_events

    job_events.add_event(session, job.id, why)


def cancel_sweep(session: Session, settings: Settings, sweep_id: str, project_id: str) -> SweepRow:
    row = get_sweep(session, sweep_id, project_id)
    if row.status != "running":
        raise APIError(
            409,
            f"Sweep {sweep_id} is already {row.status}; only a running sweep can be cancelled.",
            param="sweep_id",
            code="sweep_not_cancellable",
        )
    row.cancel_requested = True
    row.status = "cancelled"
    row.finished_at = int(time.time())
    trials = repository.trials(session, sweep_id)
    optuna_study = _study(settings, row)
    for trial in trials:
        if trial.state != "running":
            continue
        job = session.get(JobRow, trial.job_id) if trial.job_id else None
        if job is not None:
            _stop_job(session, job, f"Cancelled with its sweep {sweep_id}.")
        _end_trial(optuna_study, trial, "cancelled", error="the sweep was cancelled")
    repository.add_event(session, sweep_id, "Sweep cancelled; its running trials were cancelled.")
    session.flush()
    return row


def _report(
    session: Session, row: SweepRow, optuna_study: optuna.Study, trial: SweepTrialRow, job: JobRow
) -> bool:
    """Tell Optuna the job's new evaluations; True when the pruner stopped the trial."""
    metric = row.objective["metric"]
    evaluations = repository.evaluations_after(session, job.id, trial.reported_step)
    if not evaluations:
        return False
    live = optuna.trial.Trial(optuna_study, trial.optuna_trial_id)
    direction = row.objective["direction"]
    total_steps = int((job.progress or {}).get("total_steps") or 0)
    for evaluation in evaluations:
        value = evaluation.values.get(metric)
        judged = study.pruning_value(metric, direction, evaluation.values)
        trial.reported_step = evaluation.step
        if not isinstance(value, int | float) or judged is None:
            continue
        # the pruner compares trials at their n-th evaluation: trials with other batch sizes
        # or epoch counts evaluate at other training steps
        intermediate = [*trial.intermediate, [evaluation.step, float(value)]]
        trial.intermediate = intermediate
        live.report(judged, len(intermediate))
        # the last evaluation is the trial's result: pruning it would save no step and only
        # throw the result away
        last = 0 < total_steps <= evaluation.step
        if job.status not in job_state.TERMINAL and not last and live.should_prune():
            _stop_job(
                session,
                job,
                f"Pruned by sweep {row.id} at step {evaluation.step}: its {metric} "
                f"{value:.4f} is behind the median of the finished trials' (a tie on "
                f"{metric} goes by eval_loss).",
            )
            trial.steps = max(trial.steps, evaluation.step)
            _end_trial(optuna_study, trial, "pruned", value=None)
            trial.value = float(value)
            repository.add_event(
                session,
                row.id,
                f"Trial {trial.number} ({job.id}) pruned at step {evaluation.step} "
                f"({metric}={value:.4f}).",
                data={"trial": trial.number, "step": evaluation.step, "value": value},
            )
            return True
    return False


def _follow(
    session: Session, row: SweepRow, optuna_study: optuna.Study, trial: SweepTrialRow
) -> None:
    """One running trial: its new evaluations, and its end when its job ended."""
    job = session.get(JobRow, trial.job_id, populate_existing=True) if trial.job_id else None
    if job is None:
        _end_trial(optuna_study, trial, "failed", error="its job no longer exists")
        return
    trial.steps = int((job.progress or {}).get("step") or 0)
    if row.status != "running":
        _stop_job(session, job, f"Cancelled with its sweep {row.id}.")
        _end_trial(optuna_study, trial, "cancelled", error=f"the sweep is {row.status}")
        return
    if row.pruner != "none" and _report(session, row, optuna_study, trial, job):
        return
    if row.pruner == "none":
        _report_only(session, row, trial, job)
    if job.status not in FINISHED:
        return
    metric = row.objective["metric"]
    if job.status == "succeeded":
        value = (job.final_metrics or {}).get(metric)
        if not isinstance(value, int | float):
            _end_trial(
                optuna_study,
                trial,
                "failed",
                error=f"the job succeeded without reporting {metric}",
            )
        else:
            _end_trial(optuna_study, trial, "complete", value=float(value))
    elif job.status == "failed":
        message = (job.error or {}).get("message", "the job failed")
        _end_trial(optuna_study, trial, "failed", error=str(message))
    else:
        _end_trial(optuna_study, trial, "cancelled", error="its job was cancelled")
    repository.add_event(
        session,
        row.id,
        f"Trial {trial.number} ({job.id}) {trial.state}"
        + (f": {metric}={trial.value:.4f}." if trial.value is not None else "."),
        level="info" if trial.state == "complete" else "warning",
        data={"trial": trial.number, "state": trial.state, "value": trial.value},
    )


def _stopping(session: Session, trial: SweepTrialRow) -> int:
    """A pruned or cancelled trial's job, until its worker has stopped it: the steps it
    trained (1 while it still runs, else 0)."""
    job = session.get(JobRow, trial.job_id, populate_existing=True)
    if job is None:
        return 0
    trial.steps = max(trial.steps, int((job.progress or {}).get("step") or 0))
    return 0 if job.status in job_state.TERMINAL else 1


def _report_only(session: Session, row: SweepRow, trial: SweepTrialRow, job: JobRow) -> None:
    """With no pruner the evaluations are still shown on the trial (not told to Optuna)."""
    metric = row.objective["metric"]
    for evaluation in repository.evaluations_after(session, job.id, trial.reported_step):
        trial.reported_step = evaluation.step
        value = evaluation.values.get(metric)
        if isinstance(value, int | float):
            trial.intermediate = [*trial.intermediate, [evaluation.step, float(value)]]


def _forget_orphans(optuna_study: optuna.Study, trials: list[SweepTrialRow]) -> int:
    """Optuna trials RUNNING with no row of ours (asked, then the pass's commit failed) are
    told FAIL; returns how many trials Optuna holds in all."""
    known = {t.number for t in trials}
    everything = optuna_study.get_trials(deepcopy=False)
    for frozen in everything:
        if frozen.state == TrialState.RUNNING and frozen.number not in known:
            optuna_study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(everything)


def _start_trial(
    session: Session,
    settings: Settings,
    row: SweepRow,
    asking: optuna.Study,
    optuna_study: optuna.Study,
) -> SweepTrialRow:
    """Ask `asking` (the sweep's sampler) for a trial and create its job; a job the rules
    refuse fails the trial at once (told through `optuna_study`, which only judges)."""
    asked = asking.ask(study.distributions(_dimensions(row)))
    params = dict(asked.params)
    trial = SweepTrialRow(
        id=new_id("sweeptrial"),
        sweep_id=row.id,
        number=asked.number,
        optuna_trial_id=asked._trial_id,
        params=params,
        state="running",
        reported_step=0,
        steps=0,
        intermediate=[],
    )
    body = space.job_body(row.base_job, params)
    metadata = dict(body.get("metadata") or {})
    if len(metadata) <= 14:
        metadata.update({"sweep": row.id, "trial": str(asked.number)})
        body["metadata"] = metadata
    try:
        job = jobs.create_job(
            session, settings.models_dir, JobCreate.model_validate(body), project_id=row.project_id
        )
    except (APIError, ValueError) as exc:
        message = exc.message if isinstance(exc, APIError) else str(exc)
        _end_trial(optuna_study, trial, "failed", error=f"its job was refused: {message}")
        session.add(trial)
        repository.add_event(
            session,
            row.id,
            f"Trial {asked.number} failed: its job was refused: {message}",
            level="warning",
        )
        return trial
    trial.job_id = job.id
    _evaluate_often(session, row, job)
    session.add(trial)
    repository.add_event(
        session,
        row.id,
        f"Trial {asked.number} started as job {job.id} with {params}.",
        data={"trial": asked.number, "job_id": job.id, "params": params},
    )
    return trial


def _evaluate_often(session: Session, row: SweepRow, job: JobRow) -> None:
    """With a pruner, a trial whose job evaluates only at epoch ends gives it little to judge
    (nothing at all in one epoch): such a trial evaluates PRUNING_EVALUATIONS_PER_EPOCH times
    an epoch, and at least PRUNING_EVALUATIONS times in all. A job that sets eval_steps
    (a number, or "epoch") keeps it."""
    asked = row.base_job.get("method", {}).get("supervised", {}).get("hyperparameters", {})
    searched = any(path.endswith(".eval_steps") for path in row.search_space)
    if row.pruner == "none" or "eval_steps" in asked or searched:
        return
    hyper = dict(job.hyperparameters)
    train = session.get(FileRow, job.training_file)
    rows = int((train.stats if train is not None else {}).get("rows", 0))
    if job.validation_file is None:
        rows = round(rows * (1 - float(hyper.get("validation_split") or 0.0)))
    batch = int(hyper.get("batch_size") or 1) * int(hyper.get("gradient_accumulation_steps") or 1)
    per_epoch = max(1, -(-rows // batch))
    total = per_epoch * int(hyper.get("n_epochs") or 1)
    every = max(1, min(per_epoch // PRUNING_EVALUATIONS_PER_EPOCH, total // PRUNING_EVALUATIONS))
    if every >= per_epoch:
        return  # as often as the epochs already
    hyper["eval_steps"] = every
    job.hyperparameters = hyper
    method = dict(job.method or {})
    kind = str(method.get("type", "supervised"))
    shown = dict(method.get(kind, {}).get("hyperparameters", {}))
    method[kind] = {**method.get(kind, {}), "hyperparameters": {**shown, "eval_steps": every}}
    job.method = method
    from app.jobs import repository as job_events

    job_events.add_event(
        session,
        job.id,
        f"Evaluates every {every} steps (not only at epoch ends) so that sweep {row.id}'s "
        f"{row.pruner} pruner can judge it; set eval_steps in the sweep's job to choose.",
    )


def _finish(session: Session, row: SweepRow, trials: list[SweepTrialRow]) -> None:
    complete = [t for t in trials if t.state == "complete" and t.value is not None]
    row.finished_at = int(time.time())
    row.driven_until = None
    if not complete:
        row.status = "failed"
        row.error = {
            "code": "no_trial_completed",
            "message": "No trial completed: every one failed or was pruned. Read the trials' "
            "jobs' errors (GET /v1/fine_tuning/jobs/{id}) and the sweep's events.",
            "param": None,
        }
        repository.add_event(session, row.id, "Sweep failed: no trial completed.", level="error")
        return
    pick = max if row.objective["direction"] == "maximize" else min
    best = pick(complete, key=lambda t: float(t.value or 0.0))
    job = session.get(JobRow, best.job_id) if best.job_id else None
    row.status = "succeeded"
    row.best_trial = best.number
    row.best_fine_tuned_model = job.fine_tuned_model if job is not None else None
    repository.add_event(
        session,
        row.id,
        f"Sweep succeeded: the best trial is {best.number} ({row.objective['metric']}="
        f"{best.value:.4f}), model {row.best_fine_tuned_model}.",
        data={"best_trial": best.number, "value": best.value},
    )


def _unfinished_jobs(session: Session, project_id: str) -> int:
    from app.jobs import repository as job_repository

    return job_repository.count_unfinished(session, project_id, jobs.QUOTA_STATUSES)


def advance(session: Session, settings: Settings, row: SweepRow) -> list[str]:
    """One pass over a sweep: report, prune and tell its trials, start new ones up to
    max_parallel, finish it when all are done. Returns the new jobs' ids, to enqueue after
    the caller commits."""
    trials = repository.trials(session, row.id)
    optuna_study = _study(settings, row)
    stopping = 0
    for trial in trials:
        if trial.state == "running":
            _follow(session, row, optuna_study, trial)
            # pruned or cancelled in this very pass: its job has yet to stop
            job = session.get(JobRow, trial.job_id) if trial.job_id else None
            if trial.state != "running" and job is not None:
                stopping += 0 if job.status in job_state.TERMINAL else 1
        elif trial.job_id and trial.state in ("pruned", "cancelled"):
            stopping += _stopping(session, trial)
    started: list[str] = []
    if row.status != "running":
        return started
    asked = _forget_orphans(optuna_study, trials)
    running = sum(1 for t in trials if t.state == "running")
    while asked < row.n_trials and running < row.max_parallel:
        if _unfinished_jobs(session, row.project_id) >= settings.quota_concurrent_jobs:
            break  # the project's quota is full: the next pass tries again
        # a fresh sampler per trial: its seed counts the trials asked so far
        trial = _start_trial(session, settings, row, _study(settings, row, asked), optuna_study)
        session.flush()
        trials.append(trial)
        asked += 1
        if trial.state == "running" and trial.job_id:
            running += 1
            started.append(trial.job_id)
    # finished once every trial's job has ended too: a pruned job's trainer runs on for a
    # moment after its trial ended, and its steps count
    if asked >= row.n_trials and all(t.state != "running" for t in trials) and not stopping:
        _finish(session, row, trials)
    return started
