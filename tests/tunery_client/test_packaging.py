"""tunery-client is a distribution of its own that installs and runs without torch or the
server: its wheel is built here offline, its metadata read, and the `tunery` command run
from it with the server's packages and the ML libraries made unimportable."""

from __future__ import annotations

import argparse
import email
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support import live

REPO = Path(__file__).resolve().parents[2]
# what a client-only install must never need
SERVER_SIDE = (
    "app",
    "worker",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "fastapi",
    "sqlalchemy",
    "celery",
    "uvicorn",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's wheel, built from a copy of its folder (a build writes beside the
    sources) with the setuptools already installed: no index, no build isolation."""
    work = tmp_path_factory.mktemp("client-wheel")
    source = work / "tunery_client"
    shutil.copytree(
        REPO / "tunery_client", source, ignore=shutil.ignore_patterns("__pycache__", "build")
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--wheel-dir", str(work / "dist"), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = (work / "dist").glob("tunery_client-*.whl")
    return built


def test_the_wheel_needs_only_httpx_and_pyyaml(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(info))
        scripts = archive.read(next(n for n in names if n.endswith("entry_points.txt")))
    requires = sorted(metadata.get_all("Requires-Dist") or [])
    assert requires == ["httpx>=0.27", "pyyaml>=6"]
    assert b"tunery = tunery_client.cli:main" in scripts
    packages = {name.split("/")[0] for name in names if not name.startswith("tunery_client-")}
    assert packages == {"tunery_client"}  # no pyproject.toml, nothing of the server


def test_the_command_runs_from_the_wheel_without_torch_or_the_server(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # -I: no PYTHONPATH, no working directory on the path; the finder refuses the rest
    code = f"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_SIDE!r}:
            raise ImportError(f"{{name}} is not installed here")
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(site)!r})
import tunery_client.api, tunery_client.commands, tunery_client.jobs, tunery_client.jobspec
import tunery_client.output, tunery_client.resources
from tunery_client.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in {SERVER_SIDE!r}], "server imported"
sys.exit(code)
"""
    dead = f"http://127.0.0.1:{live.free_port()}"
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, "jobs", "list", "--base-url", dead],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Could not reach Tunery" in result.stderr
    assert "Traceback" not in result.stderr

    usage = subprocess.run(
        [sys.executable, "-I", "-c", code, "--help"], capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 0, usage.stderr
    for verb in ("files", "jobs", "sweeps", "models", "deployments", "predict"):
        assert verb in usage.stdout


def test_the_server_depends_on_the_client_and_adds_its_verbs_to_the_command() -> None:
    server = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((REPO / "tunery_client" / "pyproject.toml").read_text())["project"]
    assert f"tunery-client=={client['version']}" in server["dependencies"]
    # one distribution owns the console script; the server plugs into it
    assert "scripts" not in server
    assert client["scripts"] == {"tunery": "tunery_client.cli:main"}
    assert server["entry-points"]["tunery.commands"] == {"server": "app.cli:register"}

    from app.cli import register
    from tunery_client.cli import build_parser

    parser = build_parser([register])
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) == {
        *("serve", "api", "worker", "inference", "db", "keys"),
        *("files", "jobs", "sweeps", "models", "deployments", "predict", "usage"),
    }


def test_a_distribution_whose_verbs_cannot_import_costs_only_its_verbs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's metadata left in an environment whose `app` no longer imports (the
    packaging test above makes exactly that) must not break the client verbs."""
    from importlib.metadata import EntryPoint

    from tunery_client import cli

    broken = EntryPoint(
        name="server", value="no_such_tunery_module:register", group=cli.COMMANDS_GROUP
    )
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken])
    parser = cli.build_parser()
    assert parser.parse_args(["jobs", "list"]).command == "jobs"
    err = capsys.readouterr().err
    assert "no_such_tunery_module:register are unavailable" in err
    assert "reinstall" in err
