"""The migration walk of docs/openai-sdk.md with only the `openai` package, against `tunery
serve`: upload chats -> supervised job -> upload preferences -> DPO job from the supervised
job's model (`ft:...`) -> the reward figures -> chat with the result."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from openai.types.fine_tuning.job_create_params import Method

from tests.support import live
from tests.support.data import write_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SYSTEM = "you are a shop assistant"
GREETINGS = ["hi", "hello there", "good morning", "hey, anyone here?"]
RUDE = "go away"
KIND = "hello"
FINISHED = {"succeeded", "failed", "cancelled"}


def conversation(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[OpenAI]:
    data_dir = tmp_path_factory.mktemp("sdk-dpo") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--project", "migration"],
        env={**env, "TUNERY_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    with live.embedded(data_dir, tiny_models) as server:
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.base_url}/readyz").json()["checks"]["inference"] != "ok":
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        yield OpenAI(base_url=f"{server.base_url}/v1", api_key=key)


def finished(client: OpenAI, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in FINISHED:
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.5)
    return job


def upload(client: OpenAI, path: Path) -> str:
    with path.open("rb") as fh:
        file = client.files.create(file=fh, purpose="fine-tune")
    file = client.files.wait_for_processing(file.id)
    assert file.status == "processed", file.status_details
    return file.id


def test_supervised_then_dpo_then_chat(client: OpenAI, tmp_path: Path) -> None:
    # 1. a supervised job taught the model to be rude
    chats = [
        {"messages": [*conversation(greeting), {"role": "assistant", "content": RUDE}]}
        for greeting in GREETINGS
    ] * 8
    sft = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload(client, write_jsonl(tmp_path / "chat.jsonl", chats)),
        suffix="sft",
        seed=1,
        method=cast(
            Method,
            {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {"n_epochs": 4, "batch_size": 8, "learning_rate": 3e-3}
                },
            },
        ),
        extra_body={"training_type": {"type": "full"}},
    )
    sft = finished(client, sft.id)
    assert sft.status == "succeeded", sft.error
    assert chat(client, sft.fine_tuned_model) == [RUDE] * len(GREETINGS)

    # 2. preference data in OpenAI's format: the kind answer over the rude one
    preferences = [
        {
            "input": {"messages": conversation(greeting)},
            "preferred_output": [{"role": "assistant", "content": KIND}],
            "non_preferred_output": [{"role": "assistant", "content": RUDE}],
        }
        for greeting in GREETINGS
    ] * 8
    dpo = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,  # DPO from the supervised job's result, as OpenAI allows
        training_file=upload(client, write_jsonl(tmp_path / "prefs.jsonl", preferences)),
        suffix="dpo",
        seed=1,
        method=cast(
            Method,
            {
                "type": "dpo",
                "dpo": {
                    "hyperparameters": {
                        "beta": 0.5,
                        "n_epochs": 4,
                        "batch_size": 8,
                        "learning_rate": 3e-3,
                        "sft_weight": 1.0,  # RPO: a supervised term on the preferred answers
                    }
                },
            },
        ),
    )
    assert dpo.method is not None and dpo.method.type == "dpo"
    dpo = finished(client, dpo.id)
    assert dpo.status == "succeeded", dpo.error
    assert dpo.training_type == {"type": "full"}  # inherited from the supervised model

    # 3. the reward figures: present and finite per log and per evaluation; the margin over
    # the supervised model (the reference) went up
    metrics = client.get(f"/fine_tuning/jobs/{dpo.id}/metrics", cast_to=httpx.Response).json()
    for entry in metrics["training"] + metrics["evaluations"]:
        for name in ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"):
            assert math.isfinite(entry[name]), (name, entry)
    last = metrics["evaluations"][-1]
    assert last["reward_margin"] > 0 and last["reward_accuracy"] == 1.0

    # 4. chat: the DPO model gives the preferred answer
    answers = chat(client, dpo.fine_tuned_model)
    assert sum(answer == KIND for answer in answers) >= 3, answers


def chat(client: OpenAI, model: str | None) -> list[str | None]:
    assert model is not None
    return [
        client.chat.completions.create(
            model=model, messages=conversation(greeting), max_tokens=40, temperature=0
        )
        .choices[0]
        .message.content
        for greeting in GREETINGS
    ]
