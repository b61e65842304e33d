"""Where the trainer child and its supervisor meet on disk. Torch-free: both import it.

output_dir/
  spec.json            the spec (written by the supervisor)
  events.jsonl         one event per line (docs/internals.md)
  pause.request        created by the supervisor: save a checkpoint at the next step, exit
  verdict.step         written by the supervisor of a sweep trial: the last step whose
                       evaluation the sweep judged (the trainer waits for it)
  checkpoints/checkpoint-STEP/   the Trainer's own checkpoints (latest and best are kept)
  outbox/step-STEP/    a finished checkpoint handed to the supervisor (hard links), which
                       uploads it and removes the folder
  model/               the export, on success
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS_DIRNAME = "checkpoints"
OUTBOX_DIRNAME = "outbox"
MODEL_DIRNAME = "model"
MANIFEST = "tunery.json"
PAUSE_FILENAME = "pause.request"
VERDICT_FILENAME = "verdict.step"
CHECKPOINT_PREFIX = "checkpoint-"

# What a Trainer checkpoint holds besides the model: torch pickles written by our own trainer
# and read back only by it, to resume. They are never served nor exported.
_TRAINER_STATE = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|trainer_state\.json)$"
)
# The TrainingArguments pickle: nothing reads it back, so it is never copied anywhere.
SKIPPED_FILES = frozenset({"training_args.bin"})


def is_trainer_state(name: str) -> bool:
    return bool(_TRAINER_STATE.match(name))


def checkpoint_dirname(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def outbox_dirname(step: int) -> str:
    return f"step-{step}"


def checkpoint_steps(checkpoints_dir: Path) -> list[int]:
    """Steps of the checkpoint-STEP folders under checkpoints_dir, ascending."""
    if not checkpoints_dir.is_dir():
        return []
    steps = []
    for child in checkpoints_dir.iterdir():
        name = child.name
        if child.is_dir() and name.startswith(CHECKPOINT_PREFIX):
            suffix = name.removeprefix(CHECKPOINT_PREFIX)
            if suffix.isdigit():
                steps.append(int(suffix))
    return sorted(steps)
