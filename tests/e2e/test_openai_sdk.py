"""The quickstart of docs/openai-sdk.md: only the `openai` package, against `tunery serve`.

upload a chat file -> fine-tune tiny-llama -> poll -> events and checkpoints (paged) ->
chat with the tuned model and a checkpoint (also streamed) -> completions -> the SDK's
exception classes for a bad file, a missing job and a bad key -> pause and resume ->
models and files cleaned up.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from openai.types.fine_tuning.job_create_params import Method

from tests.support import live
from tests.support.data import chat_rows, write_jsonl
from tests.support.tool_models import add_tool_llama

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "you are happy"},
    {"role": "user", "content": "question: what is the capital of france? answer:"},
]
FINISHED = {"succeeded", "failed", "cancelled"}


@dataclass
class Served:
    server: live.LiveServer
    key: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Served]:
    """`tunery serve` with one API key, made the way an operator makes it."""
    data_dir = tmp_path_factory.mktemp("sdk") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--project", "sdk-quickstart"],
        env={**env, "TUNERY_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    with live.embedded(data_dir, tiny_models) as server:
        # the API answers before the inference server it started has loaded torch
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.base_url}/readyz").json()["checks"]["inference"] != "ok":
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        yield Served(server, key)


def wait_for_job(client: OpenAI, job_id: str, statuses: set[str], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in statuses:
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.2)
    return job


def test_quickstart(served: Served, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"{served.server.base_url}/v1", api_key=served.key)
    train_path = write_jsonl(tmp_path / "train.jsonl", chat_rows(48))

    # 1. upload the training data; it is validated as it arrives
    with train_path.open("rb") as fh:
        training_file = client.files.create(file=fh, purpose="fine-tune")
    training_file = client.files.wait_for_processing(training_file.id)
    assert training_file.status == "processed", training_file.status_details

    # 2. fine-tune; Tunery's own fields (training_type) go in extra_body
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training_file.id,
        suffix="quickstart",
        seed=1,
        metadata={"owner": "docs"},
        method=cast(
            Method,
            {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": 6,
                        "batch_size": 8,
                        "learning_rate": 3e-3,  # Tunery's absolute rate, for this tiny model
                    }
                },
            },
        ),
        extra_body={"training_type": {"type": "full"}},
    )

    # 3. poll until it finishes
    job = wait_for_job(client, job.id, FINISHED)
    assert job.status == "succeeded", (job.error, served.server.log_tail())
    model = job.fine_tuned_model
    assert model == f"ft:tiny-llama:quickstart:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0 and job.metadata == {"owner": "docs"}

    # 4. its events and checkpoints, newest first, paged with `after` by the SDK
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))
    assert len(events) > 5 and len({e.id for e in events}) == len(events)
    assert events[0].message.startswith("Job succeeded")
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=2))
    steps = [c.step_number for c in checkpoints]
    assert len(steps) >= 2 and steps == sorted(steps, reverse=True)
    assert all(c.fine_tuning_job_id == job.id for c in checkpoints)
    assert checkpoints[0].metrics.valid_loss is not None

    # 5. chat with the tuned model: it learned the answer
    answer = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=4, temperature=0
    )
    (choice,) = answer.choices
    assert choice.message.content == "paris", choice
    assert choice.finish_reason == "stop"  # it learned to end its turn, too
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    # ... streamed, token by token
    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == "paris"
    assert chunks[-1].usage == answer.usage

    # ... and with a checkpoint, which is a model too
    latest = checkpoints[0].fine_tuned_model_checkpoint
    from_checkpoint = client.chat.completions.create(
        model=latest, messages=QUESTION, max_tokens=4, temperature=0
    )
    assert from_checkpoint.model == latest and from_checkpoint.choices[0].message.content

    completion = client.completions.create(model=model, prompt="question:", max_tokens=3)
    assert completion.choices[0].finish_reason in ("stop", "length")

    # 6. the SDK's exception classes, with `param` naming what to fix
    bad_rows = chat_rows(12)
    bad_rows[3] = {"messages": [{"role": "user", "content": "no answer"}]}
    bad_data = "".join(json.dumps(row) + "\n" for row in bad_rows).encode()
    bad_file = client.files.create(file=("bad.jsonl", io.BytesIO(bad_data)), purpose="fine-tune")
    assert bad_file.status == "error" and bad_file.status_details is not None
    assert bad_file.status_details.startswith("line 4:")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=bad_file.id)
    assert bad.value.param == "training_file"
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")
    assert missing.value.param == "fine_tuning_job_id"
    stranger = OpenAI(base_url=f"{served.server.base_url}/v1", api_key="not-a-key")
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)  # it already finished
    with pytest.raises(openai.BadRequestError) as classifier:
        client.chat.completions.create(model="tiny-bert", messages=QUESTION)
    assert classifier.value.param == "model"

    # 7. models: the tuned model and its checkpoints are listed, and it can be deleted
    assert model in {m.id for m in client.models.list()}
    assert client.models.retrieve(model).owned_by == "user"
    assert client.models.delete(model).deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model, messages=QUESTION)
    assert client.files.delete(bad_file.id).deleted


def test_pause_and_resume(served: Served, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"{served.server.base_url}/v1", api_key=served.key)
    with write_jsonl(tmp_path / "train.jsonl", chat_rows(48)).open("rb") as fh:
        training_file = client.files.create(file=fh, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training_file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 100}}},
    )
    wait_for_job(client, job.id, {"running", *FINISHED})
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status in ("pausing", "paused"), paused.status
    paused = wait_for_job(client, job.id, {"paused", *FINISHED})
    assert paused.status == "paused", (paused.error, served.server.log_tail())
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running"), resumed.status
    wait_for_job(client, job.id, {"running", *FINISHED})
    assert client.fine_tuning.jobs.cancel(job.id).id == job.id
    assert wait_for_job(client, job.id, FINISHED).status == "cancelled"


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "london"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
VERDICT: Any = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["paris", "london"]},
        "sure": {"type": "boolean"},
    },
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


def test_migration_walk_chat_with_tools_n_logprobs_and_a_json_schema(
    served: Served, tmp_path: Path, tiny_models: Path
) -> None:
    """A migrating team's client calls on a model tuned from a base whose template renders
    tools: tool calls come back parsed, n=2 gives two choices, logprobs score each token
    and a JSON schema is followed. (The tool-calling training rows themselves are
    tests/e2e/test_openai_sdk_tools.py.)"""
    import jsonschema

    base = add_tool_llama(tiny_models)
    client = OpenAI(base_url=f"{served.server.base_url}/v1", api_key=served.key)
    with write_jsonl(tmp_path / "train.jsonl", chat_rows(16)).open("rb") as fh:
        training_file = client.files.create(file=fh, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=training_file.id,
        seed=1,
        method=cast(
            Method, {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}
        ),
    )
    job = wait_for_job(client, job.id, FINISHED)
    assert job.status == "succeeded", job.error
    model = job.fine_tuned_model
    assert model is not None
    chat = client.chat.completions

    called = chat.create(
        model=model,
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("paris", "london")

    two = chat.create(
        model=model, messages=QUESTION, n=2, temperature=1.0, seed=3, max_tokens=6, logprobs=True
    )
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content != two.choices[1].message.content
    for c in two.choices:
        assert c.logprobs is not None and c.logprobs.content
        assert "".join(t.token for t in c.logprobs.content) == c.message.content

    scored = chat.create(
        model=model, messages=QUESTION, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    assert scored.choices[0].logprobs is not None
    for token in scored.choices[0].logprobs.content or []:
        assert sum(math.exp(t.logprob) for t in token.top_logprobs) <= 1 + 1e-6

    verdict = chat.create(
        model=model,
        messages=QUESTION,
        max_tokens=40,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True},
        },
    )
    jsonschema.validate(json.loads(verdict.choices[0].message.content or ""), VERDICT)

    client.models.delete(model)
    client.files.delete(training_file.id)
