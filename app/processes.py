"""Child processes: started in a process group of their own and bound to their parent's life,
stopped as a group, their log's tail read back.

Every long-lived child Tunery starts goes through `spawn`: the trainer's ranks
(worker/training/launch.py), the evaluation child (worker/evaluation/runner.py) and the
worker and inference server of `tunery serve` (app/cli.py).

- **Parent death.** A parent killed with SIGKILL cannot stop its children, so each child is
  given the parent-death signal (Linux's PR_SET_PDEATHSIG) before it runs a line of its
  own: `spawn` starts a bare interpreter on `ARM_THEN_EXEC`, which arms the signal, exits if
  the parent is already gone, and execs the command in the same process (same pid; the
  signal survives the exec). Arming it in `preexec_fn` instead would run Python between
  fork and exec, which is unsafe in a process with threads (the supervisor has them). The
  signal fires when the *thread* that started the child ends, so start children from a
  thread that lives as long as they should.
- **Groups.** A child leads a new process group, or joins a given one (the trainer's ranks
  share rank 0's), so that `terminate` reaches whatever it started in turn.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Protocol

PR_SET_PDEATHSIG = 1
NEW_GROUP = 0
CAN_ARM = sys.platform.startswith("linux")
# What a child runs first (argv: PARENT_PID SIGNAL COMMAND...), as `arm_death_signal` does,
# then becomes COMMAND. Inline and run with -I -S (stdlib only, no site): it costs about one
# bare interpreter start, where importing this module with the venv's site costs several.
ARM_THEN_EXEC = """
import ctypes, os, sys
parent, death_signal, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, death_signal, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    os._exit(1)
os.execvp(command[0], command)
"""


class Child(Protocol):
    """What this module needs of a child: a `subprocess.Popen`, or a child forked warm
    (app/zygote.py: WarmChild)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    group: int = NEW_GROUP,
    death_signal: int = signal.SIGKILL,
) -> subprocess.Popen[bytes]:
    """Start `command` as a child that gets `death_signal` when this process dies.

    `group`: NEW_GROUP to lead a process group of its own, else the group id to join.
    `log`: where stdout and stderr go (appended), else they are inherited.
    """
    argv = list(command)
    if CAN_ARM:
        parent = str(os.getpid())
        argv = [sys.executable, "-I", "-S", "-c", ARM_THEN_EXEC, parent, str(int(death_signal))]
        argv += command
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("ab")) if log is not None else None
        return subprocess.Popen(
            argv,
            env=None if env is None else dict(env),
            cwd=None if cwd is None else str(cwd),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            process_group=group,
        )


def arm_death_signal(parent: int, death_signal: int) -> None:
    """In a child: get `death_signal` when the parent dies, or exit now if it already did (it
    may have died before the signal was armed, and then the signal never comes). For a child
    started some other way; `spawn` does this for its own (ARM_THEN_EXEC)."""
    if CAN_ARM:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def terminate(
    procs: Sequence[Child],
    *,
    groups: Collection[int] | None = None,
    grace: float = 5.0,
) -> None:
    """SIGTERM the process groups, wait up to `grace` seconds for every process, SIGKILL what
    lingers, and reap them all.

    `groups`: the process group ids they share (default: each process leads its own). A
    group none of whose processes is still running is not signalled: its id may since
    belong to someone else.
    """
    running = [proc for proc in procs if proc.poll() is None]
    if not running:
        return
    _signal_groups(running, groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    lingering = [proc for proc in running if proc.poll() is None]
    if lingering:
        _signal_groups(lingering, groups, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def _signal_groups(running: Sequence[Child], groups: Collection[int] | None, sig: int) -> None:
    for pgid in [proc.pid for proc in running] if groups is None else groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)


def tail(path: Path, chars: int = 800) -> str:
    """The end of a child's log on one line, for an error message."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 4 * chars))
            text = file.read().decode(errors="replace")
    except OSError:
        return "(no output)"
    return " ".join(text[-chars:].split()) or "(no output)"
