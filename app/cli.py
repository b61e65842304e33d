"""The `tunery` command: run the servers (all embedded, or each piece alone) and the database.

tunery serve [--host H] [--port P]    API + worker + inference server, nothing external
tunery api [--host H] [--port P]      the HTTP API alone
tunery worker                         a Celery worker that runs training jobs
tunery inference [--host H] [--port P]
tunery db upgrade                     apply the Alembic migrations

and the client of a running API (app/client/; TUNERY_BASE_URL, TUNERY_API_KEY):

tunery files upload|list|get|delete
tunery jobs create|list|get|watch|cancel|pause|resume|events|metrics|checkpoints
tunery models list|get|download|delete
tunery deployments create|list|get|delete
tunery predict DEPLOYMENT TEXT...     (`--json` on every verb prints the API objects)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from app.admin import add_key_commands, prepare_auth
from app.client.commands import CLIENT_COMMANDS
from app.client.commands import register as register_client_commands
from app.settings import Settings, get_settings

log = logging.getLogger("tunery")


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _prepare(settings: Settings) -> None:
    from app.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    assert settings.models_dir is not None
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = get_settings()
    _prepare(settings)
    prepare_auth(settings, args.host)
    log.info(
        "API on http://%s:%s (database %s)",
        args.host,
        args.port,
        settings.database_url.split("@")[-1],
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=settings.access_log,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    _prepare(settings)
    from worker.tasks import app

    argv = [
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={settings.queue}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--hostname=tunery-worker-{os.getpid()}@{socket.gethostname()}",
    ]
    app.worker_main(argv)
    return 0


def cmd_inference(args: argparse.Namespace) -> int:
    from worker.inference.server import run

    run(args.host, args.port)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from app.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url, args.revision)
    print(f"database at {settings.database_url.split('@')[-1]} is at revision {args.revision}")
    return 0


def _die_with_parent() -> None:
    """Runs in each child of `tunery serve` before exec: a serve killed with SIGKILL (which
    cannot stop its children itself) still takes its worker and inference server along."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PDEATHSIG


class _Children:
    """The worker and inference server of `tunery serve`, restarted if they die."""

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]) -> None:
        self.commands = commands
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            self.commands[name], env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )

    def watch(self) -> None:
        while not self.stopping.wait(2.0):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping.is_set():
                    log.warning("%s exited with %s; restarting it", name, proc.returncode)
                    self.start(name)

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = get_settings()
    _prepare(settings)
    prepare_auth(settings, args.host)
    inference_port = args.inference_port or _free_port("127.0.0.1")
    env = dict(os.environ)
    env["TUNERY_DATA_DIR"] = str(settings.data_dir)
    env["TUNERY_INFERENCE_URL"] = f"http://127.0.0.1:{inference_port}"
    python = [sys.executable, "-m", "app.cli"]
    children = _Children(
        {
            "worker": [*python, "worker", "--loglevel", "WARNING"],
            "inference": [
                *python,
                "inference",
                "--host",
                "127.0.0.1",
                "--port",
                str(inference_port),
            ],
        },
        env,
    )
    children.start("inference")
    children.start("worker")
    threading.Thread(target=children.watch, name="tunery-children", daemon=True).start()
    settings.inference_url = env["TUNERY_INFERENCE_URL"]
    print(
        f"Tunery is serving on http://{args.host}:{args.port} (data in {settings.data_dir})",
        flush=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown with the handler it found at
    # start; make that handler an exit so that the children are stopped in `finally`.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    finally:
        children.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunery", description="Self-hosted fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run API, worker and inference server together")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--inference-port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)

    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a training worker")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    inference = sub.add_parser("inference", help="run the inference server")
    inference.add_argument("--host", default="127.0.0.1")
    inference.add_argument("--port", type=int, default=8001)
    inference.set_defaults(func=cmd_inference)

    database = sub.add_parser("db", help="database schema")
    db_sub = database.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations")
    up.add_argument("revision", nargs="?", default="heads")
    up.set_defaults(func=cmd_db)

    register_client_commands(sub)
    add_key_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the client verbs print for people; the servers log
    level = logging.WARNING if args.command in CLIENT_COMMANDS else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
