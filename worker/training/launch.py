"""Start the trainer child: one process, or one per device like `torchrun --standalone`.

Torch-free (the supervisor imports it). Every rank gets torchrun's environment (RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so the Trainer sets
up distributed data parallel by itself. The ranks are started here rather than by the
torchrun agent because the supervisor must own them: they share one new process group (a
cancel stops all of it at once) and each dies with the supervisor (app/processes.py arms
PR_SET_PDEATHSIG before the rank starts), whereas torchrun puts every worker in a session
of its own and leaves them running if the agent is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app import processes as children
from app.settings import Settings
from app.zygote import Program
from worker import starts

PARENT_PID_ENV = "TUNERY_SUPERVISOR_PID"
# How long the other ranks get to report after one of them failed.
RANK_GRACE_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """Called first thing in the trainer: be SIGKILLed when the supervisor dies.

    Without this a worker killed with SIGKILL would leave its trainer running, holding CPU
    and GPU memory while the job's next attempt starts elsewhere. `launch` already armed it
    (app/processes.py); this covers a trainer started some other way with the variable set.
    """
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and children.CAN_ARM:
        children.arm_death_signal(int(parent), signal.SIGKILL)


@dataclass
class TrainerGroup:
    """The trainer's processes (rank 0 first), all in one process group."""

    procs: list[children.Child]
    logs: list[Path]
    failed_at: float | None = None
    returncode: int | None = None

    @property
    def pgid(self) -> int:
        return self.procs[0].pid

    def poll(self) -> int | None:
        """The trainer's exit status once it is over, else None.

        Rank 0's status decides (it reports the outcome); once rank 0 is done the other ranks
        are stopped. When another rank fails first, the rest get a grace period to fail or
        report, then the group is stopped and that rank's status is the trainer's.
        """
        if self.returncode is not None:
            return self.returncode
        codes = [proc.poll() for proc in self.procs]
        if codes[0] is not None:
            self.terminate()
            self.returncode = (
                codes[0]
                if codes[0] == 0 or self.failed_at is None
                else (self._first_failure(codes))
            )
            return self.returncode
        if any(code for code in codes[1:]):
            self.failed_at = self.failed_at or time.monotonic()
            if time.monotonic() - self.failed_at > RANK_GRACE_SECONDS:
                self.terminate()
                self.returncode = self._first_failure(codes)
                return self.returncode
        return None

    @staticmethod
    def _first_failure(codes: list[int | None]) -> int:
        return next((code for code in codes[1:] if code), 1)

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM the whole group, SIGKILL it if anything lingers."""
        if all(proc.poll() is not None for proc in self.procs):
            return
        children.terminate(self.procs, groups=[self.pgid], grace=grace)

    def alive(self) -> bool:
        return any(proc.poll() is None for proc in self.procs)


def launch(
    spec_path: Path, processes: int, env: Mapping[str, str], cwd: Path, settings: Settings
) -> TrainerGroup:
    """Start `python -m worker.training.run spec_path` as `processes` ranks (worker/starts.py:
    forked warm unless TUNERY_WARM_START=false)."""
    base_env = dict(env)
    if not settings.warm_start:
        # a warm child's parent is the zygote, which arms its death signal itself
        base_env[PARENT_PID_ENV] = str(os.getpid())
    if processes > 1:
        base_env.update(
            WORLD_SIZE=str(processes),
            LOCAL_WORLD_SIZE=str(processes),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    procs: list[children.Child] = []
    logs: list[Path] = []
    try:
        for rank in range(processes):
            rank_env = dict(base_env)
            if processes > 1:
                rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank))
            log_path = cwd / ("trainer.log" if rank == 0 else f"trainer-rank{rank}.log")
            logs.append(log_path)
            procs.append(
                starts.start(
                    settings,
                    Program(
                        "worker.training.run",
                        [str(spec_path)],
                        env=rank_env,
                        cwd=cwd,
                        log=log_path,
                        # rank 0 starts a new process group, the other ranks join it (a group
                        # in the supervisor's session: setpgid cannot cross sessions)
                        group=children.NEW_GROUP if rank == 0 else procs[0].pid,
                    ),
                )
            )
    except BaseException:
        TrainerGroup(procs, logs).terminate()
        raise
    return TrainerGroup(procs, logs)
