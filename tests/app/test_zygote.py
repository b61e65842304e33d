"""Warm starts (app/zygote.py): children forked from a process that imported ahead, that
behave like the cold children they replace. This module is also the children's program
(`main`), preloaded by the zygotes the tests start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import processes, zygote
from app.zygote import Program, WarmChild, WarmStartError, WarmStarts
from tests.app.test_processes import running, wait_gone

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract sockets, PR_SET_PDEATHSIG and /proc"
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.app.test_zygote"
# the pid of the process that imported this module: the zygote's, in a warm child
IMPORTED_BY = os.getpid()


def main(argv: list[str]) -> int:
    """The children's program: `report` prints what it sees, `sleep` sleeps, `raise` raises,
    `exit N` exits with N."""
    command = argv[0]
    if command == "report":
        print(f"env={os.environ.get('ZYGOTE_TEST')}")
        print(f"cwd={os.getcwd()}")
        print(f"preloaded={os.getpid() != IMPORTED_BY}")
        print(f"group={os.getpgid(0) == os.getpid()}")
        return int(argv[1])
    if command == "sleep":
        Path(argv[1]).write_text(str(os.getpid()))
        time.sleep(120)
        return 0
    if command == "raise":
        raise ValueError("a child's own error")
    if command == "exit":
        sys.exit(int(argv[1]))
    return 2


@pytest.fixture
def warm() -> Iterator[WarmStarts]:
    starts = WarmStarts([MODULE], per_launch=["ZYGOTE_RANK"])
    yield starts
    starts.close()


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra}


def program(tmp_path: Path, *args: str, log: str = "child.log", **extra: str) -> Program:
    return Program(MODULE, list(args), env=env(**extra), cwd=tmp_path, log=tmp_path / log)


def start(warm: WarmStarts, tmp_path: Path, *args: str, **extra: str) -> processes.Child:
    """The child, once its zygote is ready (before that it would start cold)."""
    assert warm.zygote(env(**extra)).wait_ready(60), "the zygote never got ready"
    return warm.spawn(program(tmp_path, *args, **extra))


def wait_for_file(path: Path) -> int:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    return int(path.read_text())


def test_a_warm_child_runs_with_its_own_env_cwd_log_and_group(
    warm: WarmStarts, tmp_path: Path
) -> None:
    child = start(warm, tmp_path, "report", "3", ZYGOTE_TEST="seen")
    assert isinstance(child, WarmChild)
    assert child.wait(60) == 3
    assert child.poll() == 3
    log = (tmp_path / "child.log").read_text()
    assert "env=seen" in log
    assert f"cwd={tmp_path}" in log
    assert "preloaded=True" in log  # imported before the fork, not by the child
    assert "group=True" in log  # leads a process group of its own


def test_exit_statuses_are_the_childs(warm: WarmStarts, tmp_path: Path) -> None:
    assert start(warm, tmp_path, "exit", "5").wait(60) == 5
    assert start(warm, tmp_path, "raise").wait(60) == 1
    assert "ValueError: a child's own error" in (tmp_path / "child.log").read_text()


def test_terminate_stops_a_warm_child_with_its_group(warm: WarmStarts, tmp_path: Path) -> None:
    child = start(warm, tmp_path, "sleep", str(tmp_path / "pid"))
    pid = wait_for_file(tmp_path / "pid")
    assert pid == child.pid
    # ps shows what a cold start would
    assert b"-m tests.app.test_zygote sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.1)
    processes.terminate([child], groups=[child.pid], grace=5.0)
    assert child.returncode == -signal.SIGTERM
    assert wait_gone(pid)


def test_one_zygote_per_environment_apart_from_per_launch_keys(
    warm: WarmStarts, tmp_path: Path
) -> None:
    first = warm.zygote(env(ZYGOTE_RANK="0"))
    assert warm.zygote(env(ZYGOTE_RANK="1")) is first
    other = warm.zygote(env(ZYGOTE_TEST="other"))
    assert other is not first
    # a third environment replaces an idle zygote; with both busy it is refused (cold start)
    assert other.wait_ready(60)
    sleeper = other.spawn(program(tmp_path, "sleep", str(tmp_path / "pid"), log="log"))
    wait_for_file(tmp_path / "pid")
    third = warm.zygote(env(ZYGOTE_TEST="third"))
    assert not first.alive() or first.proc.wait(10) is not None
    assert third is not other
    assert third.wait_ready(60)
    third_sleeper = third.spawn(program(tmp_path, "sleep", str(tmp_path / "pid3"), log="log"))
    wait_for_file(tmp_path / "pid3")
    with pytest.raises(WarmStartError):
        warm.zygote(env(ZYGOTE_TEST="fourth"))
    processes.terminate([sleeper, third_sleeper])


def test_a_failed_warm_start_starts_the_child_cold(
    warm: WarmStarts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> WarmChild:
        raise WarmStartError("refused for the test")

    monkeypatch.setattr(zygote.Zygote, "spawn", refuse)
    child = start(warm, tmp_path, "report", "4", ZYGOTE_TEST="cold")
    assert isinstance(child, subprocess.Popen)
    assert child.wait(60) == 4
    log = (tmp_path / "child.log").read_text()
    assert "env=cold" in log
    assert "preloaded=False" in log


def test_a_zygote_whose_imports_initialised_cuda_refuses_and_children_start_cold(
    tmp_path: Path,
) -> None:
    starts = WarmStarts(["tests.app.zygote_fake_cuda", MODULE])
    try:
        zygote_ = starts.zygote(env())
        assert zygote_.proc.wait(60) == zygote.REFUSED
        for _ in range(2):  # not started again for the same environment
            child = starts.spawn(program(tmp_path, "report", "0"))
            assert isinstance(child, subprocess.Popen)
            assert child.wait(60) == 0
        assert "preloaded=False" in (tmp_path / "child.log").read_text()
    finally:
        starts.close()


def test_a_zygote_still_importing_never_keeps_the_caller_waiting(tmp_path: Path) -> None:
    starts = WarmStarts(["tests.app.zygote_slow_import", MODULE])
    try:
        began = time.monotonic()
        child = starts.spawn(program(tmp_path, "report", "0"))
        assert isinstance(child, subprocess.Popen)  # cold, while the zygote imports
        assert child.wait(60) == 0
        assert time.monotonic() - began < 30
        assert not starts.zygote(env()).ready()
    finally:
        starts.close()


def test_a_dead_zygote_is_replaced(warm: WarmStarts, tmp_path: Path) -> None:
    first = warm.zygote(env())
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    child = start(warm, tmp_path, "report", "0")
    assert isinstance(child, WarmChild)
    assert child.wait(60) == 0
    assert warm.zygote(env()) is not first


def test_a_warm_child_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent_script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from app.zygote import Program, WarmStarts
        starts = WarmStarts([{MODULE!r}])
        env = {{**os.environ, "PYTHONPATH": {str(REPO_ROOT)!r}}}
        assert starts.zygote(env).wait_ready(60)
        starts.spawn(Program({MODULE!r}, ["sleep", {str(pid_file)!r}], env=env,
                     cwd=Path({str(tmp_path)!r}), log=Path({str(tmp_path / "log")!r})))
        time.sleep(120)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    child = wait_for_file(pid_file)
    assert running(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert wait_gone(child), "the warm child outlived the process that started it"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
