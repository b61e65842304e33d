"""The trainer's processes: one group, rank 0 decides, and nobody outlives the supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.processes import Child
from worker.training import launch
from worker.training.launch import TrainerGroup

REPO_ROOT = Path(__file__).resolve().parents[3]


def group_of(*scripts: str) -> TrainerGroup:
    procs: list[Child] = []
    for rank, script in enumerate(scripts):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script],
                process_group=0 if rank == 0 else procs[0].pid,
            )
        )
    return TrainerGroup(procs, [])


def wait_for(group: TrainerGroup, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = group.poll()
        if code is not None:
            return code
        time.sleep(0.05)
    raise TimeoutError


def test_rank_zero_decides_and_the_others_are_stopped() -> None:
    group = group_of("import sys; sys.exit(0)", "import time; time.sleep(60)")
    assert wait_for(group) == 0
    assert not group.alive()
    assert group.poll() == 0  # the others' SIGTERM does not change the outcome


def test_a_failing_rank_ends_the_group_after_a_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "RANK_GRACE_SECONDS", 0.5)
    group = group_of("import time; time.sleep(60)", "import sys; sys.exit(3)")
    assert wait_for(group) == 3
    assert not group.alive()


def test_terminate_stops_the_whole_group() -> None:
    group = group_of("import time; time.sleep(60)", "import time; time.sleep(60)")
    group.terminate()
    assert not group.alive()
    assert group.poll() == -signal.SIGTERM


def test_a_trainer_dies_with_its_supervisor(tmp_path: Path) -> None:
    pid_file = tmp_path / "trainer.pid"
    supervisor = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        trainer = (
            "from worker.training.launch import die_with_parent; die_with_parent(); "
            "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
            "time.sleep(60)"
        )
        env = {{**os.environ, "{launch.PARENT_PID_ENV}": str(os.getpid())}}
        subprocess.Popen([sys.executable, "-c", trainer], env=env, cwd={str(REPO_ROOT)!r})
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", supervisor], cwd=REPO_ROOT)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the trainer never started"
        time.sleep(0.05)
    trainer = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{trainer}").exists():
        status = (
            Path(f"/proc/{trainer}/status").read_text() if Path(f"/proc/{trainer}").exists() else ""
        )
        if "State:\tZ" in status:
            break  # dead, waiting to be reaped by init
        assert time.monotonic() < deadline, "the trainer outlived its supervisor"
        time.sleep(0.05)
