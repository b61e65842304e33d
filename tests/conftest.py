from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import cast

import pytest

from tests.support import backends

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The longest test files (wall seconds on two cores, `-n 2`), longest first. Under `--dist
# worksteal` each worker takes its share of the collection in order and the others steal
# from the end of it, so a long file collected late starts late and runs on alone at the end
# of the suite; these run first, then every other file with a `slow` test, then the rest.
LONGEST_FIRST = (
    "tests/bench/test_gpu_check.py",
    "tests/faults/test_broker_faults.py",
    "tests/e2e/test_sweeps_walk.py",
    "tests/e2e/test_serving_walk.py",
    "tests/e2e/test_walk.py",
    "tests/e2e/test_training_faults.py",
    "tests/e2e/test_media_walk.py",
    "tests/e2e/test_dpo_faults.py",
    "tests/e2e/test_media_faults.py",
    "tests/e2e/test_openai_sdk.py",
    "tests/e2e/test_cli_walk.py",
    "tests/faults/test_database_faults.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the long files first (LONGEST_FIRST), keeping each file's tests together and in
    their order (after pytest's grouping by module-scoped parameters), so that a module's
    shared server is started once per worker that runs it."""
    rank: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path in LONGEST_FIRST:
            mine = LONGEST_FIRST.index(path)
        else:
            mine = len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)
        rank[path] = min(rank.get(path, mine), mine)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])


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


def _services_reachable(name: str) -> bool:
    return name != "postgres" or (backends.postgres_reachable() and backends.redis_reachable())


def _record_backend(name: str, item: pytest.Item) -> bool:
    """Record on the test `item` which backend it covered, or why it skipped (the terminal
    summary says); False when that backend's services are not reachable."""
    if not _services_reachable(name):
        why = "not reachable on 127.0.0.1"
        item.user_properties.append(("tunery_backend_skipped", ("Postgres + Redis", why)))
        return False
    item.user_properties.append(("tunery_backend", backends.Backend(name).label))
    return True


UNREACHABLE = "Postgres or Redis not reachable: covered on SQLite only"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> backends.Backend:
    if not _record_backend(request.param, request.node):
        pytest.skip(UNREACHABLE)
    return backends.Backend(request.param)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_backend(request: pytest.FixtureRequest) -> backends.Backend:
    """`backend` for a whole module: what a live server its tests share runs on (pytest runs
    the module's tests grouped by it). Each test is recorded by pytest_runtest_setup."""
    if not _services_reachable(request.param):
        pytest.skip(UNREACHABLE)
    return backends.Backend(request.param)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "module_backend" in callspec.params:
        _record_backend(str(callspec.params["module_backend"]), item)


@pytest.fixture
def database_url(backend: backends.Backend, tmp_path: Path) -> Iterator[str]:
    if backend.name == "sqlite":
        yield f"sqlite:///{tmp_path / 'tunery.db'}"
    else:
        with backends.fresh_postgres_database() as url:
            yield url


class SchemaTemplates:
    """One migrated database per backend for this pytest process, built on first use."""

    def __init__(self, folder: Path, exits: ExitStack) -> None:
        self.folder, self.exits = folder, exits
        self.urls: dict[str, str] = {}

    def url(self, backend: str) -> str:
        if backend not in self.urls:
            template = backends.migrated_template(backend, self.folder)
            self.urls[backend] = self.exits.enter_context(template)
        return self.urls[backend]


@pytest.fixture(scope="session")
def schema_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaTemplates]:
    with ExitStack() as exits:
        yield SchemaTemplates(tmp_path_factory.mktemp("schema"), exits)


@pytest.fixture
def migrated_database_url(
    backend: backends.Backend, tmp_path: Path, schema_templates: SchemaTemplates
) -> Iterator[str]:
    """`database_url` with the schema in it: a copy of a database that alembic migrated once
    in this session (`database_url` stays empty, for the tests of the migrations)."""
    template = schema_templates.url(backend.name)
    if backend.name == "sqlite":
        yield backends.copy_sqlite_database(template, tmp_path / "tunery.db")
    else:
        with backends.fresh_postgres_database(template=template) as url:
            yield url


@pytest.fixture
def migrated_sqlite_url(tmp_path: Path, schema_templates: SchemaTemplates) -> str:
    """A copy of the session's migrated SQLite database, for a test about SQLite alone."""
    return backends.copy_sqlite_database(schema_templates.url("sqlite"), tmp_path / "tunery.db")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TUNERY_MODELS_DIR with tiny decoder and encoder models built locally."""
    from tests.support.models import build_tiny_bert, build_tiny_llama

    root = tmp_path_factory.mktemp("models")
    build_tiny_llama(root / "tiny-llama")
    build_tiny_bert(root / "tiny-bert")
    return root
