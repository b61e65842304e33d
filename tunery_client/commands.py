"""The client verbs of `tunery`, registered on the CLI's parser.

Every verb talks to the API at TUNERY_BASE_URL (default http://127.0.0.1:8000), sending
TUNERY_API_KEY as a Bearer token when set; `--json` prints the API's object(s) instead of
text. An error prints the API's message, which says what to change, and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunery_client import jobs, pulls, resources, sweeps
from tunery_client.api import Client, ClientError
from tunery_client.jobspec import add_job_flags

Handler = Callable[[Client, argparse.Namespace], int]
CLIENT_COMMANDS = ("files", "jobs", "sweeps", "models", "deployments", "predict", "usage")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--json", action="store_true", help="print the API object(s) as JSON")
    group.add_argument(
        "--base-url", help="the API (default: $TUNERY_BASE_URL or http://127.0.0.1:8000)"
    )
    group.add_argument("--api-key", help="Bearer token (default: $TUNERY_API_KEY)")
    return common


def _verb(
    sub: Any, name: str, handler: Handler, help: str, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, parents=[common]
    )
    parser.set_defaults(func=_run(handler), handler=handler)
    return parser


def _run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with Client(args.base_url, args.api_key) as client:
                return handler(client, args)
        except ClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _paging(parser: argparse.ArgumentParser, limit: int = 20) -> None:
    parser.add_argument(
        "--limit", type=int, default=limit, help=f"at most this many (default {limit})"
    )
    parser.add_argument("--after", help="the last id of the previous page")


def register(sub: Any) -> None:
    common = _common()

    files = sub.add_parser("files", help="upload and inspect datasets").add_subparsers(
        dest="files_command", required=True
    )
    upload = _verb(files, "upload", resources.upload, "upload a JSONL or CSV dataset", common)
    upload.add_argument("path", type=Path)
    upload.add_argument("--purpose", default="fine-tune")
    listing = _verb(files, "list", resources.list_files, "list uploaded files", common)
    _paging(listing)
    listing.add_argument("--purpose")
    _verb(
        files, "get", resources.get_file, "a file and its validation report", common
    ).add_argument("file_id")
    _verb(files, "delete", resources.delete_file, "delete a file", common).add_argument("file_id")

    job = sub.add_parser("jobs", help="fine-tuning jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    create = _verb(job, "create", jobs.create, "create a fine-tuning job", common)
    add_job_flags(create)
    create.add_argument("--watch", action="store_true", help="then watch it (as `jobs watch`)")
    _watch_flags(create)
    _paging(_verb(job, "list", jobs.list_jobs, "list jobs, newest first", common))
    _verb(job, "get", jobs.get, "one job", common).add_argument("job_id")
    watch = _verb(
        job,
        "watch",
        jobs.watch,
        "follow a job to its end; exits 0 if it succeeded, 1 if it failed, 3 if cancelled",
        common,
    )
    watch.add_argument("job_id")
    _watch_flags(watch)
    _verb(job, "cancel", jobs.cancel, "cancel a queued or running job", common).add_argument(
        "job_id"
    )
    _verb(
        job, "pause", jobs.pause, "pause a running job at its next checkpoint", common
    ).add_argument("job_id")
    _verb(job, "resume", jobs.resume, "resume a paused job", common).add_argument("job_id")
    points = _verb(job, "checkpoints", jobs.checkpoints, "a job's saved checkpoints", common)
    points.add_argument("job_id")
    _paging(points, limit=10)
    events = _verb(job, "events", jobs.events, "a job's events, oldest first", common)
    events.add_argument("job_id")
    _paging(events, limit=50)
    metrics = _verb(job, "metrics", jobs.metrics, "a job's training curve and evaluations", common)
    metrics.add_argument("job_id")
    metrics.add_argument("--plot", action="store_true", help="plot the loss in the terminal")

    sweep = sub.add_parser("sweeps", help="hyperparameter sweeps").add_subparsers(
        dest="sweeps_command", required=True
    )
    sweep_create = _verb(
        sweep, "create", sweeps.create, "create a sweep from a YAML or JSON spec", common
    )
    sweep_create.add_argument(
        "--spec", type=Path, required=True, help="the body of POST /v1/fine_tuning/sweeps"
    )
    sweep_create.add_argument("--training-file", help="sets job.training_file of the spec")
    sweep_create.add_argument("--watch", action="store_true", help="then watch it")
    _watch_flags(sweep_create)
    _paging(_verb(sweep, "list", sweeps.list_sweeps, "list sweeps, newest first", common))
    _verb(sweep, "get", sweeps.get, "one sweep and its trials", common).add_argument("sweep_id")
    sweep_watch = _verb(
        sweep,
        "watch",
        sweeps.watch,
        "a live table of the trials until the sweep ends; exits 0 if it succeeded, 1 if it "
        "failed, 3 if cancelled",
        common,
    )
    sweep_watch.add_argument("sweep_id")
    _watch_flags(sweep_watch)
    _verb(
        sweep, "cancel", sweeps.cancel, "cancel a sweep and its running trials", common
    ).add_argument("sweep_id")
    sweep_events = _verb(sweep, "events", sweeps.events, "a sweep's events, oldest first", common)
    sweep_events.add_argument("sweep_id")
    _paging(sweep_events, limit=50)

    model = sub.add_parser("models", help="base and fine-tuned models").add_subparsers(
        dest="models_command", required=True
    )
    _verb(model, "list", resources.list_models, "base and fine-tuned models", common)
    _verb(model, "get", resources.get_model, "one model", common).add_argument("model_id")
    _verb(
        model, "delete", resources.delete_model, "delete a fine-tuned or pulled base model", common
    ).add_argument("model_id")
    pulls.add_arguments(
        _verb(model, "pull", pulls.pull, "pull a base model from the Hugging Face Hub", common)
    )
    download = _verb(
        model, "download", resources.download, "download a fine-tuned model and unpack it", common
    )
    download.add_argument("model_id")
    download.add_argument("--format", choices=["adapter", "merged"], default="adapter")
    download.add_argument(
        "-o", "--output", type=Path, default=Path("."), help="unpack into this folder (default .)"
    )

    dep = sub.add_parser("deployments", help="serve models for predict").add_subparsers(
        dest="deployments_command", required=True
    )
    dep_create = _verb(dep, "create", resources.create_deployment, "deploy a model", common)
    dep_create.add_argument("model")
    dep_create.add_argument("--wait", action="store_true", help="until it is loaded")
    dep_create.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    _verb(dep, "list", resources.list_deployments, "list deployments", common)
    _verb(dep, "get", resources.get_deployment, "one deployment", common).add_argument(
        "deployment_id"
    )
    _verb(dep, "delete", resources.delete_deployment, "undeploy", common).add_argument(
        "deployment_id"
    )

    predict = _verb(
        sub, "predict", resources.predict, "predict with a deployment, or with any model", common
    )
    predict.add_argument(
        "deployment",
        help="a deployment id, or a model name (its deployment, else loaded just in time)",
    )
    predict.add_argument("text", nargs="*", help="inputs; none or '-' reads lines from stdin")
    for kind in ("image", "audio"):
        predict.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            metavar="FILE",
            help=f"an {kind} file to classify (an {kind}-classification model); repeatable",
        )
    predict.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="e.g. max_new_tokens=32, temperature=0, top_k=2; repeatable",
    )
    _verb(sub, "usage", resources.usage, "requests and tokens served to your project", common)


def _watch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument(
        "--timeout", type=float, default=None, help="give up after this many seconds"
    )
    parser.add_argument(
        "--print-every",
        type=float,
        default=5.0,
        help="when not on a terminal, seconds between progress lines",
    )
