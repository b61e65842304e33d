"""What the worker's machine offers a trainer: CUDA devices, processes, and the kernel's count
of out-of-memory kills. Torch-free: devices are probed in a throw-away process."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from pathlib import Path

PROCESSES_ENV = "TUNERY_TRAINER_PROCESSES"


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices this worker can use; asks torch in a throw-away process (the supervisor
    stays torch-free) and only where an NVIDIA driver is present at all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if not Path("/proc/driver/nvidia").exists():
        return 0
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return int(probe.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def trainer_processes() -> int:
    """How many trainer processes a job gets: TUNERY_TRAINER_PROCESSES, else one per GPU."""
    configured = os.environ.get(PROCESSES_ENV, "").strip()
    if configured:
        try:
            count = int(configured)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{PROCESSES_ENV} must be a positive integer, got {configured!r}")
        return count
    return max(1, cuda_device_count())


def oom_kills() -> int | None:
    """The cgroup's count of out-of-memory kills (v2, then v1), None when unknown."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(path).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    return None
