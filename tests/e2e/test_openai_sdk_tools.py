"""A migrating team's dataset, through the `openai` SDK against live servers: the examples of
OpenAI's fine-tuning guide (tools, the older functions, tool answers, multi-turn weights)
upload and train unmodified on a base whose chat template takes tools; on a base whose
template does not, the job is refused when it is created, saying so; a broken tool call is
refused at upload with its line.

Runs embedded (`tunery serve`) and, where reachable, on Postgres + Redis.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import openai
import pytest
from openai import OpenAI
from openai.types.fine_tuning.job_create_params import Method

from tests.support import backends, live, openai_examples
from tests.support.tool_template import copy_with_tool_template

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINISHED = {"succeeded", "failed", "cancelled"}
METHOD = cast(
    Method,
    {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
    },
)


@pytest.fixture(scope="module")
def tool_models(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    """tiny-llama as it is (its template has no tools) and tiny-tool-llama (the same model
    with tests/support/tool_template.py's template)."""
    root = tmp_path_factory.mktemp("tool-models")
    shutil.copytree(tiny_models / "tiny-llama", root / "tiny-llama")
    copy_with_tool_template(tiny_models / "tiny-llama", root / "tiny-tool-llama")
    return root


@pytest.fixture
def client(
    backend: backends.Backend, tmp_path: Path, tool_models: Path
) -> Iterator[tuple[OpenAI, live.LiveServer]]:
    with live.for_backend(backend, tmp_path / "data", tool_models) as server:
        # no API key exists: any key string is accepted
        yield OpenAI(base_url=f"{server.base_url}/v1", api_key="tun-migrating"), server


def wait_for_job(client: OpenAI, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in FINISHED:
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.2)
    return job


def test_openai_docs_tool_dataset_trains_unmodified(
    client: tuple[OpenAI, live.LiveServer],
) -> None:
    sdk, server = client
    data = openai_examples.training_file().encode()
    uploaded = sdk.files.create(file=("openai-docs.jsonl", io.BytesIO(data)), purpose="fine-tune")
    uploaded = sdk.files.wait_for_processing(uploaded.id)
    assert uploaded.status == "processed", uploaded.status_details

    job = sdk.fine_tuning.jobs.create(
        model="tiny-tool-llama", training_file=uploaded.id, suffix="tools", seed=3, method=METHOD
    )
    job = wait_for_job(sdk, job.id)
    assert job.status == "succeeded", (job.error, server.log_tail())
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.fine_tuned_model == f"ft:tiny-tool-llama:tools:{job.id}"
    answer = sdk.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "What is the weather in San Francisco?"}],
        max_tokens=8,
        temperature=0,
    )
    assert answer.choices[0].finish_reason in ("stop", "length")

    # the same file on a base whose template has no tools: refused when the job is created
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, method=METHOD)
    assert refused.value.param == "model" and refused.value.code == "unsupported_chat_template"
    assert "but tiny-llama never renders the tool definitions" in refused.value.message

    # a tool call whose arguments are an object, not a JSON string: refused with its line
    rows = [json.loads(line) for line in openai_examples.training_file().splitlines()]
    rows[2]["messages"][1]["function_call"]["arguments"] = {"location": "Paris"}
    bad = "".join(json.dumps(row) + "\n" for row in rows).encode()
    bad_file = sdk.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    assert bad_file.status == "error"
    assert bad_file.status_details == (
        "line 3: messages[1].function_call.arguments must be a string holding JSON (as OpenAI "
        'sends them), got an object: write it as "{\\"location\\": \\"Paris\\"}"'
    )
