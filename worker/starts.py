"""How the worker starts its torch children, the trainer's ranks and the evaluations: forked
warm from a zygote that already imported torch, transformers, peft and the task plugins'
trainers (app/zygote.py), or, with TUNERY_WARM_START=false, as a fresh interpreter each.

Torch-free: the supervisor and the evaluation runner import it.
"""

from __future__ import annotations

import os
from functools import lru_cache

import task_plugins
from app import processes
from app.settings import Settings
from app.zygote import Program, WarmStarts

# set per launch, after the zygote was started: none of them is read when a module is
# imported, nor is any of Tunery's own settings (TUNERY_*: read by get_settings() at run time)
PER_LAUNCH_KEYS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PYTEST_CURRENT_TEST",  # pytest names the running test in it
)


def preload() -> list[str]:
    """The modules a zygote imports before it forks: everything a child imports anyway."""
    trainers = [task.trainer.partition(":")[0] for task in task_plugins.TASKS]
    return ["worker.training.run", "worker.evaluation.run", *trainers]


@lru_cache
def _warm_starts() -> WarmStarts:
    return WarmStarts(preload(), PER_LAUNCH_KEYS, per_launch_prefix="TUNERY_")


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a torch child: the worker's, with the settings it must see."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "0" if settings.allow_hub else "1"
    return env


def start(settings: Settings, program: Program) -> processes.Child:
    """The program's child, forked warm when the settings allow it. It gets SIGKILL when this
    process dies, either way."""
    if settings.warm_start:
        return _warm_starts().spawn(program)
    return program.cold()


def prestart(settings: Settings) -> None:
    """Start the zygote now (it takes seconds to import), so that the first job is warm."""
    if settings.warm_start:
        _warm_starts().start(child_env(settings))
