"""Warm starts: the trainer and evaluation children forked from a process that already
imported torch, transformers and peft, instead of a fresh interpreter that imports them.

Importing those libraries costs 5-6 s of CPU on every job (measured on a 2-core box:
5.3 s of the 6.8 s a trainer took to reach its first line of work), which a short job or
a sweep's trial pays again and again. A zygote (the name comes from Android, which starts
its apps this way) is started once per worker with the children's environment, imports the
modules it is told to preload, and then forks one child per request:

- the child runs `module.main(args)` with the request's environment, working directory and
  log (stdout and stderr), in the process group it asks for, and exits with its status;
- the zygote reports the child's pid, then its exit status (a signal as a negative number,
  as `subprocess` does), over the connection that asked for it. `WarmChild` offers the
  part of `subprocess.Popen` that app/processes.py uses (`pid`, `poll`, `wait`,
  `returncode`), so the trainer's group and the evaluation runner treat both alike;
- lifetimes: the zygote exits when the process that started it exits (its stdin pipe
  reaches end of file), and each child gets SIGKILL when the zygote dies
  (PR_SET_PDEATHSIG). So a SIGKILLed worker still takes its trainer down with it, as with a
  cold start (app/processes.py).

The zygote stays single-threaded: it only imports, accepts and forks, so forking it is as
safe as forking a DataLoader worker. It never touches CUDA, and a child that uses the GPU
starts CUDA itself. Environment variables that libraries read when imported are the
zygote's, so a zygote serves only requests whose environment equals the one it was started
with, apart from the per-launch keys the caller names; `WarmStarts` starts another zygote
for a different one. A child asked for while its zygote still imports starts cold at once
(the caller may be a supervisor with a lease to renew: it never waits seconds on imports),
and so does one whose warm start fails, with a warning in the log.

The server side runs as `python -m app.zygote LISTEN_FD READY_FD MODULE...`; nothing here
imports torch in the process that starts it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import setproctitle

from app import processes

logger = logging.getLogger(__name__)

# how long a client waits for a ready zygote to fork (milliseconds, unless it is stuck)
FORK_TIMEOUT_SECONDS = 10.0
# zygotes one process keeps for different environments; an idle one goes first
MAX_ZYGOTES = 2
# the zygote's exit status when it will not fork (its imports initialised CUDA)
REFUSED = 75


@dataclass(frozen=True)
class Program:
    """A child to start: `module.main(args)` (cold: `python -m module args`) with its
    environment, working directory, log (stdout and stderr, appended) and process group
    (`processes.NEW_GROUP` to lead one, else the group id to join)."""

    module: str
    args: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log: Path
    group: int = processes.NEW_GROUP

    def cold(self, death_signal: int = signal.SIGKILL) -> processes.Child:
        """Started as a fresh interpreter that dies with this process."""
        return processes.spawn(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env,
            cwd=self.cwd,
            log=self.log,
            group=self.group,
            death_signal=death_signal,
        )


class WarmStartError(RuntimeError):
    """The zygote could not start the child; the caller starts it cold instead."""


class WarmChild:
    """A child forked by a zygote: what app/processes.py uses of `subprocess.Popen`."""

    def __init__(self, connection: socket.socket, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._connection = connection
        self._buffer = b""

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(block=False, timeout=None)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._read(block=True, timeout=timeout)
        if self.returncode is None:
            assert timeout is not None
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read(self, *, block: bool, timeout: float | None) -> None:
        try:
            if block:
                self._connection.settimeout(timeout)
            else:
                self._connection.setblocking(False)
            while b"\n" not in self._buffer:
                chunk = self._connection.recv(4096)
                if not chunk:
                    # the zygote died: its children got SIGKILL (their death signal)
                    self._settle(-signal.SIGKILL)
                    return
                self._buffer += chunk
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            self._settle(-signal.SIGKILL)
            return
        line, _, self._buffer = self._buffer.partition(b"\n")
        self._settle(int(json.loads(line)["exit"]))

    def _settle(self, code: int) -> None:
        self.returncode = code
        self._connection.close()


class Zygote:
    """One zygote process, started with `env`, preloading `preload`."""

    def __init__(self, env: Mapping[str, str], preload: Sequence[str]) -> None:
        self.env = dict(env)
        self.children: list[WarmChild] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # an abstract socket: no file to clean up, private to this host's network namespace
        self.address = f"\0tunery-zygote-{os.getpid()}-{id(self)}"
        self._listener.bind(self.address)
        self._listener.listen(64)
        fd = self._listener.fileno()
        # the zygote writes a byte here once it has imported: until then a request would wait
        # seconds for it, and `WarmStarts` starts the child cold instead
        self._ready_r, ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        self._ready = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.zygote", str(fd), str(ready_w), *preload],
            # torch.cuda.is_available() asks NVML rather than the CUDA driver, which a forked
            # child could not use once its parent had initialised it
            env={**self.env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"},
            stdin=subprocess.PIPE,  # its end of file tells the zygote this process is gone
            pass_fds=[fd, ready_w],
            process_group=processes.NEW_GROUP,
        )
        self._listener.close()
        os.close(ready_w)

    def ready(self) -> bool:
        """Whether it has imported its modules and forks at once."""
        if not self._ready:
            with contextlib.suppress(BlockingIOError):
                self._ready = os.read(self._ready_r, 1) == b"1"
        return self._ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for `ready()`."""
        if not self._ready:
            select.select([self._ready_r], [], [], timeout)
        return self.ready()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def refused(self) -> bool:
        """It exited because its imports initialised CUDA (see `_serve`)."""
        return self.proc.poll() == REFUSED

    def busy(self) -> bool:
        self.children = [child for child in self.children if child.poll() is None]
        return bool(self.children)

    def spawn(self, program: Program) -> WarmChild:
        """Fork the program's child; raises WarmStartError if it could not."""
        request = {
            "module": program.module,
            "args": list(program.args),
            "env": dict(program.env),
            "cwd": str(program.cwd),
            "log": str(program.log),
            "group": program.group,
        }
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.settimeout(FORK_TIMEOUT_SECONDS)
            connection.connect(self.address)
            connection.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while b"\n" not in reply:
                chunk = connection.recv(4096)
                if not chunk:
                    raise WarmStartError("the zygote closed the connection before forking")
                reply += chunk
        except OSError as exc:
            connection.close()
            raise WarmStartError(f"the zygote did not answer: {exc}") from exc
        line, _, rest = reply.partition(b"\n")
        pid = int(json.loads(line)["pid"])
        child = WarmChild(connection, pid, [program.module, *program.args])
        child._buffer = rest
        self.children = [c for c in self.children if c.returncode is None] + [child]
        return child

    def close(self) -> None:
        """Stop the zygote (its children die with it)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        processes.terminate([self.proc], grace=2.0)
        with contextlib.suppress(OSError):
            os.close(self._ready_r)


class WarmStarts:
    """The zygotes of one process, one per environment (apart from per-launch keys)."""

    def __init__(
        self, preload: Sequence[str], per_launch: Iterable[str] = (), per_launch_prefix: str = ""
    ) -> None:
        """`per_launch`: environment keys no preloaded module reads when it is imported, which
        may differ from launch to launch; so may every key that starts with
        `per_launch_prefix` (when given)."""
        self.preload = list(preload)
        self.per_launch = frozenset(per_launch)
        self.per_launch_prefix = per_launch_prefix
        self._zygotes: list[Zygote] = []
        self._refused: list[dict[str, str]] = []  # environments started cold from now on
        self._lock = threading.Lock()

    def spawn(self, program: Program, death_signal: int = signal.SIGKILL) -> processes.Child:
        """The program forked warm; started cold when the warm path fails."""
        try:
            zygote = self.zygote(program.env)
            if not zygote.ready():
                # never keep the caller (a supervisor with a lease to renew) waiting on imports
                logger.info("the zygote is still importing; %s starts cold", program.module)
                return program.cold(death_signal)
            return zygote.spawn(program)
        except (WarmStartError, OSError) as exc:
            logger.warning("warm start of %s failed (%s); starting it cold", program.module, exc)
        return program.cold(death_signal)

    def zygote(self, env: Mapping[str, str]) -> Zygote:
        """The zygote for this environment, started if there is none yet."""
        base = {k: v for k, v in env.items() if not self._per_launch(k)}
        with self._lock:
            self._refused += [z.env for z in self._zygotes if z.refused()]
            if base in self._refused:
                raise WarmStartError("its zygote refused to fork: its imports initialised CUDA")
            self._zygotes = [z for z in self._zygotes if z.alive()]
            for zygote in self._zygotes:
                if zygote.env == base:
                    return zygote
            for zygote in self._zygotes:
                changed = sorted(
                    k for k in {*base, *zygote.env} if base.get(k) != zygote.env.get(k)
                )
                logger.info("another zygote for a changed environment: %s", ", ".join(changed))
            while len(self._zygotes) >= MAX_ZYGOTES:
                idle = next((z for z in self._zygotes if not z.busy()), None)
                if idle is None:
                    raise WarmStartError(f"{MAX_ZYGOTES} zygotes are busy with other environments")
                self._zygotes.remove(idle)
                idle.close()
            zygote = Zygote(base, self.preload)
            self._zygotes.append(zygote)
            return zygote

    def _per_launch(self, key: str) -> bool:
        return key in self.per_launch or bool(
            self.per_launch_prefix and key.startswith(self.per_launch_prefix)
        )

    def start(self, env: Mapping[str, str]) -> None:
        """Start the zygote for `env` now, so that the first child is warm too."""
        with contextlib.suppress(WarmStartError, OSError):
            self.zygote(env)

    def close(self) -> None:
        with self._lock:
            for zygote in self._zygotes:
                zygote.close()
            self._zygotes.clear()


# -- the zygote process ------------------------------------------------------------------------


@dataclass
class _Pending:
    connection: socket.socket
    data: bytes = b""


def _serve(listener: socket.socket, ready: int, preload: Sequence[str]) -> int:
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # the child will import it again and report the error itself
            traceback.print_exc()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print(
            "app.zygote: the preloaded modules initialised CUDA, which a forked child cannot "
            "use; the children of this worker start cold",
            file=sys.stderr,
        )
        return REFUSED
    os.write(ready, b"1")
    os.close(ready)
    sys.stdout.flush()
    sys.stderr.flush()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    alive = sys.stdin.fileno()
    pending: dict[int, _Pending] = {}
    reporting: dict[int, socket.socket] = {}  # child pid -> who waits for its status
    while True:
        watched = [listener.fileno(), alive, wake_r, *pending]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(watched, [], [])
            if alive in readable and not os.read(alive, 4096):
                return 0  # the process that started us is gone; our children die with us
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            if listener.fileno() in readable:
                connection, _ = listener.accept()
                pending[connection.fileno()] = _Pending(connection)
            for fd in [fd for fd in readable if fd in pending]:
                item = pending[fd]
                chunk = item.connection.recv(65536)
                item.data += chunk
                if not chunk or b"\n" in item.data:
                    del pending[fd]
                    if not chunk:
                        item.connection.close()
                        continue
                    request = json.loads(item.data.partition(b"\n")[0])
                    closing = [listener.fileno(), alive, wake_r, wake_w, *pending]
                    closing += [c.fileno() for c in reporting.values()]
                    pid = os.fork()
                    if pid == 0:
                        _become(request, [*closing, fd])
                    with contextlib.suppress(OSError):
                        os.setpgid(pid, int(request["group"]) or pid)
                    with contextlib.suppress(OSError):
                        item.connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                    reporting[pid] = item.connection
        _reap(reporting)


def _reap(reporting: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = reporting.pop(pid, None)
        if connection is not None:
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
            connection.close()


def _become(request: dict[str, Any], inherited: list[int]) -> None:
    """In the forked child: become the requested program; never returns."""
    code = 1
    try:
        zygote = os.getppid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.setpgid(0, int(request["group"]))
        if processes.CAN_ARM:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(
                    processes.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0
                )
        if os.getppid() != zygote:
            os._exit(1)
        args = [str(arg) for arg in request["args"]]
        # what a cold start would show in ps and /proc/PID/cmdline (before the environment
        # changes: setproctitle finds its room in the memory the environment started in)
        setproctitle.setproctitle(" ".join([sys.executable, "-m", request["module"], *args]))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)  # 0 itself: the zygote's stdin was closed
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (fd 0 stays open until exit)
        sys.argv = [request["module"], *args]
        try:
            result = importlib.import_module(request["module"]).main(args)
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m app.zygote LISTEN_FD READY_FD [MODULE...]", file=sys.stderr)
        return 2
    listener = socket.socket(fileno=int(argv[0]))
    return _serve(listener, int(argv[1]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
