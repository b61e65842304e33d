"""`tunery models pull ID [--revision R]`: start a pull of a base model from the Hugging
Face Hub (POST /v1/models/pull, an admin key) and follow it with a progress bar."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from tunery_client import output
from tunery_client.api import Client

UNFINISHED = ("queued", "running")


def pull(client: Client, args: argparse.Namespace) -> int:
    state: dict[str, Any] = client.post(
        "/v1/models/pull", json={"model": args.model_id, "revision": args.revision}
    )
    progress = output.ByteProgress(
        f"pulling {args.model_id}", state["total_bytes"] or None, quiet=args.json
    )
    progress.advance(state["downloaded_bytes"])
    while state["status"] in UNFINISHED and not args.no_wait:
        time.sleep(args.interval)
        state = client.get(f"/v1/models/pulls/{state['id']}")
        progress.advance(max(0, state["downloaded_bytes"] - progress.done))
    progress.close()
    if args.json:
        output.print_json(state)
    elif state["status"] == "succeeded":
        print(
            f"Pulled {state['model']} at {state['sha']} ({state['downloaded_files']} files, "
            f"{output.size(state['total_bytes'])}); it is a {state['task']} base model: "
            f"tunery jobs create --model {state['model']} --training-file FILE_ID"
        )
    elif state["status"] in UNFINISHED:
        print(f"Pull {state['id']} of {state['model']} is {state['status']}.")
    if state["status"] == "failed":
        error = state.get("error") or {}
        print(f"error: {error.get('message', 'the pull failed')}", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_id", help="a Hugging Face Hub model id, org/name")
    parser.add_argument(
        "--revision", default="main", help="a branch, tag or commit sha (default main)"
    )
    parser.add_argument("--no-wait", action="store_true", help="start the pull and return at once")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between progress checks"
    )
