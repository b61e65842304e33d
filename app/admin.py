"""Operator commands that work on the database directly: `tunery keys ...`, and the rule
that an instance without keys only listens on loopback."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from app.auth import active_key_count, create_key, install_key, list_keys, revoke_key
from app.db import session_scope
from app.failures import APIError
from app.settings import Settings, get_settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare_auth(settings: Settings, host: str) -> None:
    """Install TUNERY_BOOTSTRAP_API_KEY if set (compose's way to start with a key), then
    exit with a reason when binding beyond loopback while no API key exists."""
    with session_scope(settings.database_url) as session:
        if settings.bootstrap_api_key:
            install_key(session, settings.bootstrap_project, settings.bootstrap_api_key)
        keys = active_key_count(session)
    if is_loopback(host):
        return
    if keys == 0:
        sys.exit(
            f"tunery: refusing to listen on {host} without API keys: anyone who can reach it "
            "could read your data and use your GPUs. Create a key first with "
            "`tunery keys create --project NAME`, or bind to 127.0.0.1."
        )


def _keys_create(args: argparse.Namespace) -> int:
    from app.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        row, key = create_key(session, args.project)
        print(f"Created API key {row.id} for project {args.project!r}. It is shown only once:")
        print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        rows = list_keys(session)
        print(f"{'ID':<30} {'PREFIX':<14} {'PROJECT':<20} STATUS")
        for key, project in rows:
            status = "revoked" if key.revoked_at else "active"
            print(f"{key.id:<30} {key.prefix:<14} {project.name:<20} {status}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            row = revoke_key(session, args.key)
            print(f"Revoked API key {row.id} ({row.prefix}...).")
    except APIError as exc:
        print(f"tunery: {exc.message}", file=sys.stderr)
        return 1
    return 0


def add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys (works on the database directly)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--project", required=True, help="the project the key belongs to")
    create.set_defaults(func=_keys_create)
    listing = keys_sub.add_parser("list", help="list keys (prefixes only)")
    listing.set_defaults(func=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    revoke.set_defaults(func=_keys_revoke)
