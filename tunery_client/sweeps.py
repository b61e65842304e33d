"""`tunery sweeps ...`: create (from a YAML or JSON spec), list, get, watch, cancel, events."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tunery_client import output
from tunery_client.api import Client, ClientError

SWEEPS = "/v1/fine_tuning/sweeps"
TERMINAL = {"succeeded", "failed", "cancelled"}
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3


def read_spec(path: Path) -> dict[str, Any]:
    """The body of POST /v1/fine_tuning/sweeps, from a YAML (or JSON) file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot read --spec {path}: {exc.strerror}") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ClientError(f"--spec {path} is not valid YAML{line}: {exc}") from None
    if not isinstance(spec, dict):
        raise ClientError(
            f"--spec {path} must hold a mapping with job, search_space, objective, n_trials "
            "(docs/training.md, Sweeps)"
        )
    return spec


def create(client: Client, args: argparse.Namespace) -> int:
    spec = read_spec(args.spec)
    if args.training_file:
        spec.setdefault("job", {})["training_file"] = args.training_file
    sweep = client.post(SWEEPS, spec)
    if args.json and not args.watch:
        output.print_json(sweep)
        return 0
    if not args.json:
        print(
            f"Created {sweep['id']}: {sweep['n_trials']} trials, {sweep['max_parallel']} at a "
            f"time, {sweep['sampler']} sampler, {sweep['pruner']} pruner."
        )
    if args.watch:
        return watch_sweep(client, sweep["id"], args)
    print(f"Follow it with: tunery sweeps watch {sweep['id']}")
    return 0


def list_sweeps(client: Client, args: argparse.Namespace) -> int:
    page = client.get(SWEEPS, limit=args.limit, after=args.after)
    if args.json:
        output.print_json(page)
        return 0
    rows = []
    for sweep in page["data"]:
        done = sum(1 for t in sweep["trials"] if t["state"] != "running")
        rows.append(
            [
                sweep["id"],
                output.status_text(sweep["status"]),
                f"{done}/{sweep['n_trials']}",
                f"{sweep['objective']['metric']} {output.number(sweep.get('best_value'))}",
                output.when(sweep.get("created_at")),
                sweep.get("best_fine_tuned_model"),
            ]
        )
    if not rows:
        print("No sweeps yet: create one with `tunery sweeps create --spec sweep.yaml`.")
        return 0
    output.table(["id", "status", "trials", "best", "created", "best model"], rows)
    if page.get("has_more"):
        print(f"(more: --after {page['last_id']})")
    return 0


def trial_rows(sweep: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for trial in sweep["trials"]:
        best = "*" if trial["number"] == sweep.get("best_trial") else ""
        params = ", ".join(
            f"{path.rsplit('.', 1)[-1]}={output.number(value)}"
            for path, value in trial["params"].items()
        )
        rows.append(
            [
                f"{trial['number']}{best}",
                output.status_text(trial["state"]),
                output.number(trial.get("value")),
                trial["steps"],
                params,
                trial.get("job_id") or trial.get("error") or "-",
            ]
        )
    return rows


def describe(sweep: dict[str, Any]) -> None:
    objective = sweep["objective"]
    print(f"{sweep['id']}  {output.status_text(sweep['status'])}")
    print(
        f"  {objective['direction']} {objective['metric']} over {sweep['n_trials']} trials, "
        f"{sweep['max_parallel']} at a time ({sweep['sampler']} sampler, {sweep['pruner']} "
        f"pruner); {sweep['total_steps']} steps trained"
    )
    if sweep.get("best_trial") is not None:
        print(
            f"  best: trial {sweep['best_trial']} ({objective['metric']} "
            f"{output.number(sweep.get('best_value'))}), model {sweep['best_fine_tuned_model']}"
        )
    if sweep.get("error"):
        print(f"  error: {sweep['error']['message']}")
    if sweep["trials"]:
        output.table(
            ["trial", "state", objective["metric"], "steps", "params", "job"], trial_rows(sweep)
        )


def get(client: Client, args: argparse.Namespace) -> int:
    sweep = client.get(f"{SWEEPS}/{args.sweep_id}")
    if args.json:
        output.print_json(sweep)
        return 0
    describe(sweep)
    return 0


def cancel(client: Client, args: argparse.Namespace) -> int:
    sweep = client.post(f"{SWEEPS}/{args.sweep_id}/cancel")
    if args.json:
        output.print_json(sweep)
        return 0
    print(f"{sweep['id']} is {sweep['status']}; its running trials were cancelled.")
    return 0


def events(client: Client, args: argparse.Namespace) -> int:
    page = client.get(f"{SWEEPS}/{args.sweep_id}/events", limit=args.limit, after=args.after)
    if args.json:
        output.print_json(page)
        return 0
    for event in reversed(page["data"]):
        print(f"{output.when(event['created_at'])}  {event['level']:<7}  {event['message']}")
    return 0


def watch(client: Client, args: argparse.Namespace) -> int:
    return watch_sweep(client, args.sweep_id, args)


def watch_sweep(client: Client, sweep_id: str, args: argparse.Namespace) -> int:
    """The trials' table, redrawn on a terminal at every poll (printed when it changes
    elsewhere), until the sweep ends. Exit code: 0 succeeded, 1 failed, 3 cancelled."""
    quiet = bool(args.json)
    live = output.is_tty(sys.stdout)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    shown: list[list[Any]] | None = None
    try:
        while True:
            sweep = client.get(f"{SWEEPS}/{sweep_id}")
            rows = trial_rows(sweep)
            if not quiet and rows != shown:
                if live:
                    print("\x1b[H\x1b[2J", end="")  # clear the screen: the table in place
                describe(sweep)
                shown = rows
            if sweep["status"] in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(
                    f"{sweep_id} is still {sweep['status']} after {args.timeout:g}s "
                    "(--timeout); it keeps running: watch it again, or cancel it with "
                    "`tunery sweeps cancel`."
                )
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print(
            f"\nStopped watching; {sweep_id} goes on (tunery sweeps watch {sweep_id}).",
            file=sys.stderr,
        )
        return 130
    if quiet:
        output.print_json(sweep)
    status = sweep["status"]
    if status == "succeeded":
        if not quiet:
            print(
                f"Deploy the best: tunery deployments create {sweep['best_fine_tuned_model']} "
                "--wait"
            )
        return EXIT_SUCCEEDED
    if status == "cancelled":
        print(f"{sweep_id} was cancelled.", file=sys.stderr)
        return EXIT_CANCELLED
    message = (sweep.get("error") or {}).get("message", "no trial completed")
    print(f"{sweep_id} failed: {message}", file=sys.stderr)
    return EXIT_FAILED
