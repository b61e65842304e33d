from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.support import backends

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_report_header(config: pytest.Config) -> str:
    pg = "reachable" if backends.postgres_reachable() else "NOT reachable"
    rd = "reachable" if backends.redis_reachable() else "NOT reachable"
    return f"tunery backends: SQLite always; Postgres {pg}; Redis {rd}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect what each test covered or skipped; under xdist this runs in the controller,
    which runs no test itself, from the workers' reports."""
    for name, value in report.user_properties:
        if name == "tunery_backend":
            backends.COVERED.add(str(value))
        elif name == "tunery_backend_skipped":
            backend, why = cast("tuple[object, object]", value)
            backends.SKIPPED[str(backend)] = str(why)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    covered = ", ".join(sorted(backends.COVERED)) or "none"
    terminalreporter.write_line(f"tunery backends covered: {covered}")
    for name, why in sorted(backends.SKIPPED.items()):
        terminalreporter.write_line(f"tunery backend skipped: {name} ({why})")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> backends.Backend:
    if request.param == "postgres" and not (
        backends.postgres_reachable() and backends.redis_reachable()
    ):
        why = "not reachable on 127.0.0.1"
        request.node.user_properties.append(("tunery_backend_skipped", ("Postgres + Redis", why)))
        pytest.skip("Postgres or Redis not reachable: covered on SQLite only")
    backend = backends.Backend(request.param)
    request.node.user_properties.append(("tunery_backend", backend.label))
    return backend


@pytest.fixture
def database_url(backend: backends.Backend, tmp_path: Path) -> Iterator[str]:
    if backend.name == "sqlite":
        yield f"sqlite:///{tmp_path / 'tunery.db'}"
    else:
        with backends.fresh_postgres_database() as url:
            yield url


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TUNERY_MODELS_DIR with tiny decoder and encoder models built locally."""
    from tests.support.models import build_tiny_bert, build_tiny_llama

    root = tmp_path_factory.mktemp("models")
    build_tiny_llama(root / "tiny-llama")
    build_tiny_bert(root / "tiny-bert")
    return root
