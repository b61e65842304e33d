"""`python -m worker celery|inference`: the data plane's processes.

`tunery worker` and `tunery inference` (app/cli.py) prepare the data folder and the
database, then exec these, and `tunery serve` starts them as children: app/ never imports
worker/, which imports torch.

python -m worker celery [--loglevel L]              a Celery worker that runs jobs and evaluations
python -m worker inference [--host H] [--port P]    the inference server
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence


def celery(args: argparse.Namespace) -> None:
    from celery.signals import worker_ready

    from app.settings import get_settings
    from worker.starts import prestart
    from worker.tasks import app

    settings = get_settings()
    # the trainers' zygote imports torch as soon as the worker is up, so that the first job
    # starts warm too; not before: Celery sets its logging variables (CELERY_LOG_*) while it
    # starts, and a zygote serves only the environment it was started with
    worker_ready.connect(lambda **_: prestart(settings), weak=False)
    app.worker_main(
        [
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
    )


def inference(args: argparse.Namespace) -> None:
    from worker.inference.server import run

    run(args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="The data plane.")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("celery", help="a Celery worker that runs jobs and evaluations")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=celery)
    server = sub.add_parser("inference", help="the inference server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8001)
    server.set_defaults(func=inference)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
