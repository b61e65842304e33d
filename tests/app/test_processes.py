"""Child processes (app/processes.py): bound to their parent's life, stopped as a group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import processes

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's"
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return False


def wait_for_line(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return text.strip()
        time.sleep(0.05)
    raise TimeoutError(f"nothing written to {path}")


def test_a_child_dies_with_its_parent_even_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    # a parent that spawns a child and says its pid, then waits to be killed
    parent_code = (
        "import sys, time\n"
        "from app.processes import spawn\n"
        f"child = spawn({SLEEPER!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    out = tmp_path / "parent.out"
    with out.open("w") as stdout:
        parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=stdout)
    try:
        child = int(wait_for_line(out))
        # running the command itself: the parent-death signal was armed before the exec
        deadline = time.monotonic() + 30
        while b"time.sleep(120)" not in Path(f"/proc/{child}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the child never started its command"
            time.sleep(0.05)
        assert os.getpgid(child) == child  # the leader of a group of its own

        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_gone(child), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()


def test_a_child_whose_parent_is_already_gone_never_runs_its_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    not_the_parent = str(os.getppid())  # the child's parent is this process, not its parent
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", processes.ARM_THEN_EXEC, not_the_parent, "9", *command],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert not marker.exists()


def test_terminate_stops_the_whole_group_and_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    # a child that ignores SIGTERM and has a child of its own (same group) that does not
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"grandchild = subprocess.Popen({SLEEPER!r})\n"
        "print(grandchild.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "child.log"
    child = processes.spawn([sys.executable, "-c", code], log=log)
    grandchild = int(wait_for_line(log))
    assert os.getpgid(grandchild) == child.pid

    started = time.monotonic()
    processes.terminate([child], grace=1.0)
    assert child.returncode == -signal.SIGKILL  # SIGTERM was ignored: killed after the grace
    assert time.monotonic() - started < 10
    assert wait_gone(grandchild)


def test_children_can_share_one_group_and_stop_together(tmp_path: Path) -> None:
    first = processes.spawn(SLEEPER)
    second = processes.spawn(SLEEPER, group=first.pid)
    assert os.getpgid(second.pid) == first.pid
    processes.terminate([first, second], groups=[first.pid], grace=5.0)
    assert first.returncode == second.returncode == -signal.SIGTERM


def test_terminate_leaves_alone_what_already_exited() -> None:
    done = processes.spawn([sys.executable, "-c", "pass"])
    done.wait()
    processes.terminate([done])  # nothing to signal, and no error
    assert done.returncode == 0


def test_the_log_is_appended_and_its_tail_read_back_on_one_line(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_text("from before\n")
    code = "import sys; print('line one'); print('line two', file=sys.stderr)"
    child = processes.spawn([sys.executable, "-c", code], log=log, cwd=tmp_path)
    assert child.wait(60) == 0
    assert log.read_text().splitlines() == ["from before", "line one", "line two"]
    assert processes.tail(log) == "from before line one line two"
    assert processes.tail(log, chars=9) == "line two"  # the newline counts
    assert processes.tail(tmp_path / "missing.log") == "(no output)"
