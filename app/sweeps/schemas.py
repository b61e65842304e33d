"""Sweep requests and the sweep object (a Tunery extension beside fine_tuning.job)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.jobs.schemas import JobCreate
from app.jobs.spec import Strict
from app.sweeps.space import SearchSpace
from app.tables import SweepRow, SweepTrialRow

MAX_TRIALS = 1000


class Objective(Strict):
    # one of the task's selectable metrics (eval_loss, accuracy, f1, ... ; checked per task)
    metric: Annotated[str, Field(min_length=1, max_length=64)]
    # None: minimize eval_loss and perplexity, maximize the others
    direction: Literal["maximize", "minimize"] | None = None


class SweepCreate(Strict):
    # the body of POST /v1/fine_tuning/jobs every trial starts from
    job: JobCreate
    search_space: SearchSpace
    objective: Objective
    n_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 10
    max_parallel: Annotated[int, Field(ge=1, le=64)] = 2
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    # the sampler's seed (None: drawn at random)
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


class TrialPublic(BaseModel):
    number: int
    job_id: str | None
    params: dict[str, Any]
    # running, complete, pruned, failed, cancelled
    state: str
    value: float | None
    steps: int
    # [training step, objective] at each evaluation told to Optuna
    intermediate_values: list[list[float]]
    created_at: int
    finished_at: int | None
    error: str | None

    @classmethod
    def of(cls, row: SweepTrialRow) -> TrialPublic:
        return cls(
            number=row.number,
            job_id=row.job_id,
            params=row.params,
            state=row.state,
            value=row.value,
            steps=row.steps,
            intermediate_values=row.intermediate or [],
            created_at=row.created_at,
            finished_at=row.finished_at,
            error=row.error,
        )


class SweepPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.sweep"] = "fine_tuning.sweep"
    status: str
    created_at: int
    finished_at: int | None
    job: dict[str, Any]
    search_space: dict[str, Any]
    objective: dict[str, Any]
    n_trials: int
    max_parallel: int
    sampler: str
    pruner: str
    trials: list[TrialPublic]
    best_trial: int | None
    best_value: float | None
    best_fine_tuned_model: str | None
    total_steps: int
    error: dict[str, Any] | None

    @classmethod
    def of(cls, row: SweepRow, trials: list[SweepTrialRow]) -> SweepPublic:
        best = next((t for t in trials if t.number == row.best_trial), None)
        return cls(
            id=row.id,
            status=row.status,
            created_at=row.created_at,
            finished_at=row.finished_at,
            job=row.base_job,
            search_space=row.search_space,
            objective=row.objective,
            n_trials=row.n_trials,
            max_parallel=row.max_parallel,
            sampler=row.sampler,
            pruner=row.pruner,
            trials=[TrialPublic.of(t) for t in sorted(trials, key=lambda t: t.number)],
            best_trial=row.best_trial,
            best_value=best.value if best is not None else None,
            best_fine_tuned_model=row.best_fine_tuned_model,
            total_steps=sum(t.steps for t in trials),
            error=row.error,
        )
