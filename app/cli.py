"""The server verbs of `tunery`: run the servers (all embedded, or each piece alone), the
database and the API keys.

tunery serve [--host H] [--port P]    API + worker + inference server, nothing external
tunery api [--host H] [--port P]      the HTTP API alone
tunery worker                         a Celery worker that runs training jobs
tunery inference [--host H] [--port P]
tunery db upgrade                     apply the Alembic migrations
tunery keys create|list|revoke        API keys (app/admin.py)

The client verbs (files, jobs, models, deployments, predict) come from the tunery_client
package, which builds the parser; `register` adds these to it, through the
`tunery.commands` entry point when run as the `tunery` script, and directly as `python -m
app.cli`. The worker and the inference server run torch, which app/ never imports: their
verbs prepare what the control plane owns (data folder, schema), then exec `python -m
worker ...` in the same process (`serve` starts the same commands as children).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from app import processes
from app.admin import add_key_commands, prepare_auth
from app.settings import Settings, get_settings

log = logging.getLogger("tunery")
# stopping `tunery serve`: how long its worker and inference server get to exit
CHILD_GRACE_SECONDS = 10.0


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _prepare(settings: Settings) -> None:
    from app.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from app.heap import freeze_startup_heap
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
    app = create_app(settings)
    freeze_startup_heap()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=settings.access_log,
        timeout_graceful_shutdown=5,
    )
    return 0


def worker_command(*args: str) -> list[str]:
    """`python -m worker ...` (worker/__main__.py) with this interpreter."""
    return [sys.executable, "-m", "worker", *args]


def _become(command: list[str]) -> NoReturn:
    """Replace this process with `command`: same pid, so whoever started `tunery worker`
    (a supervisor, Compose, a test) signals the worker itself."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def cmd_worker(args: argparse.Namespace) -> int:
    _prepare(get_settings())
    _become(worker_command("celery", "--loglevel", args.loglevel))


def cmd_inference(args: argparse.Namespace) -> int:
    _become(worker_command("inference", "--host", args.host, "--port", str(args.port)))


def cmd_db(args: argparse.Namespace) -> int:
    from app.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url, args.revision)
    print(f"database at {settings.database_url.split('@')[-1]} is at revision {args.revision}")
    return 0


class _Children:
    """The worker and inference server of `tunery serve`, restarted if they die."""

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]) -> None:
        self.commands = commands
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()

    def start(self, name: str) -> None:
        # SIGTERM when serve dies, even by SIGKILL (which cannot stop them itself)
        self.procs[name] = processes.spawn(
            self.commands[name], env=self.env, death_signal=signal.SIGTERM
        )

    def watch(self) -> None:
        while not self.stopping.wait(2.0):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping.is_set():
                    log.warning("%s exited with %s; restarting it", name, proc.returncode)
                    self.start(name)

    def stop(self) -> None:
        self.stopping.set()
        processes.terminate(list(self.procs.values()), grace=CHILD_GRACE_SECONDS)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.heap import freeze_startup_heap
    from app.main import create_app

    settings = get_settings()
    _prepare(settings)
    prepare_auth(settings, args.host)
    inference_port = args.inference_port or _free_port("127.0.0.1")
    env = dict(os.environ)
    env["TUNERY_DATA_DIR"] = str(settings.data_dir)
    env["TUNERY_INFERENCE_URL"] = f"http://127.0.0.1:{inference_port}"
    children = _Children(
        {
            "worker": worker_command("celery", "--loglevel", "WARNING"),
            "inference": worker_command(
                "inference", "--host", "127.0.0.1", "--port", str(inference_port)
            ),
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
    app = create_app(settings)
    freeze_startup_heap()
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    finally:
        children.stop()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the server verbs to the `tunery` parser (the `tunery.commands` entry point)."""
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

    add_key_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    """The whole `tunery` parser: the client verbs and these."""
    from tunery_client.cli import build_parser as client_parser

    return client_parser([register])


def main(argv: Sequence[str] | None = None) -> int:
    from tunery_client.cli import main as client_main

    return client_main(argv, [register])


if __name__ == "__main__":
    sys.exit(main())
