"""`tunery models pull` against the API in process and the local Hub (both backends)."""

from __future__ import annotations

import json

import pytest

from tests.app.conftest import Api
from tests.app.hub.conftest import LLAMA, PICKLE_ONLY, hub  # noqa: F401 - the hub fixture
from tests.app.hub.test_pull_api import hub_api  # noqa: F401 - the hub_api fixture
from tests.support.hub_server import FakeHub
from tests.tunery_client.test_cli_commands import run
from tunery_client.api import ClientError


def test_pull_follows_the_progress_to_the_end(
    hub_api: Api,  # noqa: F811
    hub: FakeHub,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(hub_api, "models", "pull", LLAMA, "--interval", "0.05") == 0
    out = capsys.readouterr().out
    sha = hub.repos[LLAMA].refs["main"]
    assert f"Pulled {LLAMA} at {sha}" in out and f"--model {LLAMA}" in out
    assert run(hub_api, "models", "get", LLAMA, "--json") == 0
    assert json.loads(capsys.readouterr().out)["sha"] == sha
    # a revision, as JSON
    hub.repos[LLAMA].refs["v1"] = sha
    assert run(hub_api, "models", "pull", LLAMA, "--revision", "v1", "--json") == 0
    state = json.loads(capsys.readouterr().out)
    assert (state["revision"], state["sha"], state["status"]) == ("v1", sha, "succeeded")


def test_a_refused_pull_says_why(
    hub_api: Api,  # noqa: F811
    hub: FakeHub,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ClientError) as caught:
        run(hub_api, "models", "pull", PICKLE_ONLY)
    assert "pickle" in str(caught.value) and "400" in str(caught.value)
