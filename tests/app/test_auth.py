from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.auth import create_key, hash_key, revoke_key
from tests.app.conftest import Api


def test_open_until_a_key_exists_then_every_v1_route_needs_one(api: Api) -> None:
    api.client.app.state.keys.cache_seconds = 0  # type: ignore[attr-defined]
    assert api.client.get("/v1/models").status_code == 200  # no keys: the embedded mode

    make_session = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    with make_session() as session:
        row, key = create_key(session, "acme")
        session.commit()
    assert key.startswith("tun-") and len(key) > 40

    missing = api.client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "tunery keys create" in missing.json()["error"]["message"]
    assert api.client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    good = {"Authorization": f"Bearer {key}"}
    assert api.client.get("/v1/models", headers=good).status_code == 200
    assert api.client.get("/healthz").status_code == 200  # health stays open

    with make_session() as session:
        revoke_key(session, row.id)
        session.commit()
    assert api.client.get("/v1/models", headers=good).status_code == 401


def test_keys_cli_prints_the_key_alone_on_its_last_line(tmp_path: Path) -> None:
    env = {"TUNERY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "app.cli", "keys"]
    created = subprocess.run(
        [*run, "create", "--project", "acme"], env=env, capture_output=True, text=True, check=True
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tun-") and " " not in key
    listing = subprocess.run([*run, "list"], env=env, capture_output=True, text=True, check=True)
    assert "acme" in listing.stdout and "active" in listing.stdout and key not in listing.stdout
    key_id = listing.stdout.splitlines()[1].split()[0]
    subprocess.run([*run, "revoke", key_id], env=env, check=True, capture_output=True)
    listing = subprocess.run([*run, "list"], env=env, capture_output=True, text=True, check=True)
    assert "revoked" in listing.stdout

    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "api", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0 without API keys" in refused.stderr


def test_a_key_is_stored_only_as_its_hash(api: Api) -> None:
    """The database never holds a usable key: what leaks from a backup opens nothing."""
    from sqlalchemy import text

    make_session = api.client.app.state.sessionmaker  # type: ignore[attr-defined]
    with make_session() as session:
        _, key = create_key(session, "acme")
        session.commit()
        rows = session.execute(text("SELECT * FROM api_keys")).all()
    stored = " ".join(str(value) for row in rows for value in row)
    assert key not in stored and key[12:] not in stored  # not even its secret part
    assert hash_key(key) in stored  # sha256 of the key, looked up by hash
