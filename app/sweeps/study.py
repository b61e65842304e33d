"""Optuna, as a sweep uses it: a study per sweep in Optuna's RDB storage, samplers and pruners
by name, and the search space as Optuna's distributions. Tunery writes no sampler or pruner.

Optuna's tables (and its own alembic_version) are kept apart from the service's: on Postgres
in the schema `optuna` of the same database (the sweeps migration creates it); on SQLite in
the file `<database>.optuna.db` beside the database (SQLite has no schemas).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from sqlalchemy.engine import make_url

from app.sweeps.space import Choice, IntRange, LogUniform, Uniform, grid_values

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


def storage_url(database_url: str, configured: str = "") -> str:
    if configured:
        return configured
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:":
            raise ValueError("sweeps need a file database (SQLite in memory has no second file)")
        stem = database.removesuffix(".db")
        return str(url.set(database=f"{stem}.optuna.db"))
    return url.render_as_string(hide_password=False)


@lru_cache(maxsize=8)
def storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (and engine) per URL per process; Optuna creates its tables on first use."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if make_url(url).get_backend_name() == "sqlite":
        kwargs = {"connect_args": {"timeout": 30}}
    elif make_url(url).get_backend_name().startswith("postgresql"):
        kwargs["connect_args"] = {"options": "-csearch_path=optuna"}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def distributions(
    space: dict[str, Uniform | LogUniform | IntRange | Choice],
) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for path, dim in space.items():
        if isinstance(dim, Choice):
            out[path] = CategoricalDistribution(dim.values)
        elif isinstance(dim, IntRange):
            out[path] = IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        else:
            out[path] = FloatDistribution(
                float(dim.low), float(dim.high), log=isinstance(dim, LogUniform)
            )
    return out


def grid_size(space: dict[str, Uniform | LogUniform | IntRange | Choice]) -> int:
    size = 1
    for path, dim in space.items():
        size *= len(grid_values(path, dim))
    return size


def make_sampler(
    name: str,
    space: dict[str, Uniform | LogUniform | IntRange | Choice],
    n_trials: int,
    seed: int,
    asked: int,
) -> optuna.samplers.BaseSampler:
    """A fresh sampler for one ask. A grid is shuffled once by the sweep's `seed` and trial k
    takes its k-th point, so its seed stays; the others' seed moves on with the trials
    `asked` so far (one rebuilt with the same seed would draw again what it drew before)."""
    moved = (seed + asked) % 2**31
    if name == "random":
        return optuna.samplers.RandomSampler(seed=moved)
    if name == "grid":
        grid = {path: grid_values(path, dim) for path, dim in space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    # TPE's default of 10 random trials first would leave a 12-trial sweep almost random
    return optuna.samplers.TPESampler(n_startup_trials=max(2, min(10, n_trials // 3)), seed=moved)


def judging_sampler() -> optuna.samplers.BaseSampler:
    """The sampler of a study loaded to report, prune and tell (not to ask): one whose
    after_trial does nothing (GridSampler's stops the study once the grid is done, which
    raises outside study.optimize)."""
    return optuna.samplers.RandomSampler(seed=0)


def make_pruner(name: str, n_trials: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # prune against the median once a few trials have finished (Optuna's default of 5
        # would leave a small sweep nothing to prune)
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, n_trials // 4)))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


# how far the tie-break may move a value the pruner judges: far below the step of a metric
# counted over a validation set (1/rows), so it orders only values the metric calls equal
TIE_BREAK = 1e-6


def pruning_value(
    metric: str, direction: Literal["maximize", "minimize"], values: Mapping[str, object]
) -> float | None:
    """The value the pruner judges for one evaluation: the objective's, with ties broken by the
    evaluation's eval_loss (None when the evaluation has no objective value).

    A metric counted over the validation rows (accuracy, f1, token_accuracy) moves in steps of
    1/rows, so on a small validation set many trials sit at exactly the same value, often the
    no-skill plateau, and the median pruner prunes only a trial *worse* than the median: a
    tie runs to its end. The loss on the same rows orders those ties (the lower, the more the
    model has learned towards the labels) at a finer resolution; it moves a value by less than
    TIE_BREAK, so any difference the metric itself sees still decides. The trial's objective,
    what it is told when it completes and what picks the best trial, stays the metric as is."""
    value = values.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    loss = values.get("eval_loss")
    if metric == "eval_loss" or not isinstance(loss, int | float) or not math.isfinite(loss):
        return float(value)
    # loss / (1 + loss) keeps any non-negative loss in [0, 1)
    worse = TIE_BREAK * max(0.0, float(loss)) / (1.0 + max(0.0, float(loss)))
    return float(value) - worse if direction == "maximize" else float(value) + worse


def create_study(url: str, name: str, direction: Literal["maximize", "minimize"]) -> None:
    optuna.create_study(
        storage=storage(url), study_name=name, direction=direction, load_if_exists=True
    )


def load_study(
    url: str,
    name: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(url), sampler=sampler, pruner=pruner)
