"""A sweep trial's pause after each evaluation, until the sweep has judged it.

A sweep's pruner judges a trial's evaluations in the API's driver, not in the trainer. If
the trainer trained on while the evaluation travelled (events.jsonl, the supervisor, the
database, the driver, Optuna, the job's cancel flag, the supervisor again), a pruned trial
would stop several steps after the evaluation that condemned it, and those steps are the
cost pruning is meant to save. So after each evaluation but the last the trainer waits
until the supervisor says the sweep judged that step (VerdictFile), at most `seconds`:
a slow or stopped driver only slows the trial down, never holds it forever.

The verdict only ever lets the trainer go on: a pruned trial's job is cancelled, and the
supervisor stops the trainer as for any cancel, while it still waits here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

POLL_SECONDS = 0.05


class VerdictFile:
    """The last judged step the supervisor wrote (0 before it wrote any)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except OSError:
            return 0
        # written whole by a rename; anything else is "not yet"
        return int(text) if text.isdigit() else 0


class AwaitVerdict(TrainerCallback):
    """After each evaluation but the last, wait until `judged()` reaches its step, for at
    most `seconds`. Every rank waits on the same file, so they go on together (the bound can
    only let one go first by less than a poll, and the next collective lines them up)."""

    def __init__(
        self,
        judged: Callable[[], int],
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.judged = judged
        self.seconds = seconds
        self.clock = clock
        self.sleep = sleep
        # (step, seconds waited) of each evaluation; for tests and the trainer log
        self.waits: list[tuple[int, float]] = []

    def wait(self, step: int) -> bool:
        """True when the verdict came, False when the wait ran out."""
        started = self.clock()
        deadline = started + self.seconds
        while self.judged() < step:
            if self.clock() >= deadline:
                self.waits.append((step, self.clock() - started))
                return False
            self.sleep(POLL_SECONDS)
        self.waits.append((step, self.clock() - started))
        return True

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # the last evaluation is the trial's result: nothing is left to prune
        if self.seconds > 0 and state.global_step < state.max_steps:
            self.wait(state.global_step)
