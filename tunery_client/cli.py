"""The `tunery` command.

The client verbs (files, jobs, models, deployments, predict) are this package's own. Other
installed distributions add verbs through the `tunery.commands` entry point group, each a
function that registers its subcommands: the server distribution adds `serve`, `api`,
`worker`, `inference`, `db` and `keys` (app/cli.py). A client-only install (`pip install
tunery-client`) has the client verbs and nothing of the server, torch included.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points

from tunery_client.commands import CLIENT_COMMANDS, register

COMMANDS_GROUP = "tunery.commands"
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def installed_commands() -> list[Register]:
    """The registration functions of the installed distributions that add verbs.

    A distribution whose verbs cannot be imported (its metadata left behind by an uninstall,
    or a dependency missing) costs its own verbs only: the client verbs still work, and a
    note on stderr says which verbs are missing and why.
    """
    found: list[Register] = []
    for entry in entry_points(group=COMMANDS_GROUP):
        try:
            found.append(entry.load())
        except ImportError as error:
            print(
                f"tunery: the commands of {entry.value} are unavailable ({error}); "
                f"reinstall the distribution that provides them to get them back",
                file=sys.stderr,
            )
    return found


def build_parser(extra: Iterable[Register] | None = None) -> argparse.ArgumentParser:
    """The whole parser: the client verbs, then `extra` (default: the installed ones)."""
    parser = argparse.ArgumentParser(prog="tunery", description="Self-hosted fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in installed_commands() if extra is None else extra:
        add(sub)
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None, extra: Iterable[Register] | None = None) -> int:
    args = build_parser(extra).parse_args(argv)
    # the client verbs print for people; the servers log
    level = logging.WARNING if args.command in CLIENT_COMMANDS else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(args.func(args) or 0)
