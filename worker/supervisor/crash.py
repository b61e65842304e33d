"""Why a trainer that exited without reporting an outcome died, said so a user can act."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from app.failures import Failure


def crash_failure(returncode: int, logs: list[Path], oom_killed: bool) -> Failure:
    """The failure of a trainer that exited without a `succeeded`, `paused` or `failed`."""
    tail = ""
    for log_path in logs:
        with contextlib.suppress(OSError):
            text = log_path.read_text(errors="replace").strip()
            if text:
                tail = text[-600:]
                break
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        killed_by = f"signal {-returncode}{f' ({name})' if name else ''}"
    else:
        killed_by = ""
    if oom_killed:
        code = "out_of_memory"
        message = (
            f"The trainer was killed by the kernel for running out of host memory ({killed_by}). "
            "Lower batch_size (raise gradient_accumulation_steps to keep the effective batch), "
            "lower max_seq_length, use training_type lora, or turn on gradient_checkpointing."
        )
    elif returncode == -signal.SIGKILL:
        code = "trainer_killed"
        message = (
            "The trainer process was killed with SIGKILL from outside Tunery: by an operator, "
            "the container runtime, or the kernel's out-of-memory killer. If the machine ran "
            "short of memory, lower batch_size or max_seq_length, or use training_type lora; "
            "otherwise retry the job."
        )
    elif killed_by:
        code = "trainer_crashed"
        message = f"The trainer process died from {killed_by} without reporting a result."
    else:
        code = "trainer_crashed"
        message = f"The trainer process exited with code {returncode} without reporting a result."
    if tail:
        message += f" Last output: {tail}"
    return Failure(code, message)
