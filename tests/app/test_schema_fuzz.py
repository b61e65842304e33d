"""Property-based fuzzing of the whole OpenAPI schema with schemathesis, in process (ASGI) on
SQLite: every operation gets schema-valid and schema-invalid requests, and every response
must be no 5xx, a documented status code, a body matching the documented schema, the
documented content type, and a right `Allow` on 405. Then stateful scenarios follow the
schema's links (app/openapi.py) from creates to the reads and actions on what they returned.

Left out: `positive_data_acceptance`, which expects every schema-valid request to succeed.
The schema cannot say that `training_file` must name an uploaded, processed file, or that a
chat message list needs an assistant turn; such requests answer 400 with the field, as
OpenAI's API does, and that is checked by the other checks (documented 400, error schema).

Random ids mostly meet 404s, so half the cases are grounded: their ids and model names are
swapped for real ones seeded first (a processed file, a queued job, a deployment of a base
model whose inference server is down), which takes them past the lookups into the rules.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    unsupported_method,
)
from schemathesis.generation import GenerationMode
from starlette.types import ASGIApp, Receive, Scope, Send

from app.main import create_app
from app.settings import Settings
from tests.conftest import SchemaTemplates
from tests.support.backends import copy_sqlite_database
from tests.support.fuzz import no_server_error

pytestmark = pytest.mark.faults

# examples per operation: 32 operations x 40, plus 30 stateful scenarios, take ~100 s on a
# 2-core machine. CI draws the same examples every run (a red build is a regression, not a
# lucky draw); TUNERY_FUZZ_EXAMPLES=N hunts with fresh random examples, N per operation and
# N scenarios (`make fuzz` runs it with a printed seed, and Postgres too: scripts/fuzz.py).
HUNT = os.environ.get("TUNERY_FUZZ_EXAMPLES")
EXAMPLES = int(HUNT or "40")
# stateful scenarios (each up to 6 calls along the schema's links)
STATEFUL_SCENARIOS = int(HUNT or "30")


def _openapi() -> dict[str, Any]:
    """The schema, from an app that is built only to describe itself."""
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(data_dir=Path(tmp)), reconciler=False).openapi()


schema = schemathesis.openapi.from_dict(_openapi())
# A negative body may be invalid by its size alone (a string over maxLength); one over the
# upload limit is refused with 413 before it is parsed, which is a rejection too.
schema.config.checks.negative_data_rejection.expected_statuses.append("413")


class Running:
    """Hands requests to an app whose lifespan the fixture runs once, so that schemathesis's
    ASGI client does not start and stop it around its calls."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.app(scope, receive, send)


ROWS = "".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(12))


def _seed(client: TestClient) -> dict[str, str]:
    """Real objects whose ids grounded cases use."""
    file = client.post(
        "/v1/files", files={"file": ("train.jsonl", ROWS.encode())}, data={"purpose": "fine-tune"}
    )
    assert file.status_code == 200, file.text
    file_id = file.json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": file_id})
    assert job.status_code == 200, job.text
    deployment = client.post("/v1/deployments", json={"model": "tiny-bert"})
    assert deployment.status_code == 200, deployment.text
    return {
        "file_id": file_id,
        "training_file": file_id,
        "validation_file": file_id,
        "file": file_id,
        "job_id": job.json()["id"],
        "dep_id": deployment.json()["id"],
        "model_id": "tiny-bert",
        "model": "tiny-bert",
    }


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, schema_templates: SchemaTemplates
) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("fuzz")
    app_settings = Settings(
        data_dir=tmp / "data",
        database_url=copy_sqlite_database(schema_templates.url("sqlite"), tmp / "tunery.db"),
        models_dir=tiny_models,
        inference_url="http://127.0.0.1:9",  # nothing listens: predict answers 503
        max_upload_bytes=64 * 1024,
    )
    app = create_app(app_settings, reconciler=False)
    app.state.enqueue = lambda _job_id: None  # no worker: jobs stay queued
    with TestClient(app) as client:
        app.state.fuzz_ids = _seed(client)
        yield app


_grounding = itertools.cycle([False, True])


def _ground(case: schemathesis.Case, ids: dict[str, str]) -> None:
    """Swap ids and model names for real ones (every other schema-valid case: a negative
    case keeps what makes it invalid)."""
    meta = getattr(case, "_meta", None)
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    if not next(_grounding):
        return
    for name in list(case.path_parameters or {}):
        if name in ids:
            case.path_parameters[name] = ids[name]
    if isinstance(case.body, dict):
        for name in list(case.body):
            if name in ids and isinstance(case.body[name], str):
                case.body[name] = ids[name]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=HUNT is None,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_responses_match_the_schema(
    case: schemathesis.Case, fuzzed: Any
) -> None:
    _ground(case, fuzzed.state.fuzz_ids)
    case.call_and_validate(
        app=Running(fuzzed),
        excluded_checks=_excluded_checks(case),
        additional_checks=[no_server_error],
    )


def _excluded_checks(case: schemathesis.Case) -> list[Any]:
    excluded = [positive_data_acceptance, not_a_server_error]
    if case.operation.path in (
        "/v1/models/{model_id}/content",
        "/v1/models/pull",
        "/v1/models/pulls",
        "/v1/models/pulls/{pull_id}",
    ):
        # model ids hold slashes (org/name), so DELETE .../X/content is the deletion of a
        # model named "X/content" (404), not an unsupported method (405); the same for
        # DELETE /v1/models/pull and /v1/models/pulls/...
        excluded.append(unsupported_method)
    if case.operation.path == "/v1/files" and case.method == "POST":
        # a multipart part is bytes: a "number" or "null" sent as the file is a file holding
        # those bytes, which is answered with a file in status "error" (tests/faults/)
        excluded.append(negative_data_rejection)
    return excluded


def test_stateful_chains_of_calls_along_the_links(fuzzed: Any) -> None:
    """Scenarios that follow the schema's links (a create, then the reads and actions on what
    it returned), with the same checks as above plus schemathesis's stateful ones (a deleted
    object answers 404, a created one can be read).

    A scenario's later steps depend on what the app answered (a link resolves or not), and the
    app keeps what earlier scenarios did, so Hypothesis may find a new scenario drawing
    differently from an earlier one with the same start (FlakyStrategyDefinition). Without a
    failed check that only ends the run early, as it ends schemathesis's own stateful phase;
    a check that failed is raised."""
    app = Running(fuzzed)
    scenarios = 0
    failures: list[BaseException] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            nonlocal scenarios
            scenarios += 1

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"app": app}

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            try:
                case.validate_response(
                    response,
                    additional_checks=[no_server_error],
                    excluded_checks=_excluded_checks(case),
                    transport_kwargs=kwargs or None,
                    recorder=self.recorder,
                )
            except BaseException as exc:
                failures.append(exc)
                raise

    try:
        Workflow.run(
            settings=settings(
                max_examples=STATEFUL_SCENARIOS,
                stateful_step_count=6,
                derandomize=HUNT is None,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
        )
    # raised alone, or inside Hypothesis's FlakyFailure group when a replay drew differently
    except* FlakyStrategyDefinition:
        if failures:
            raise failures[0] from None
        assert scenarios >= min(10, STATEFUL_SCENARIOS), f"only {scenarios} scenarios ran"


def test_the_schema_documents_errors_as_they_are_sent() -> None:
    """Validation answers 400 with the error body, so no route claims FastAPI's 422."""
    document = _openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1/"):
                assert {"400", "401", "404", "413", "429", "503"} <= set(responses), (method, path)
                assert responses["400"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }
            assert "422" not in responses, (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]
