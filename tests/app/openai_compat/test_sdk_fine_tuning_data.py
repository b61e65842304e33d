"""Rows of docs/openai-sdk.md's "Fine-tuning data and jobs" contract through the openai SDK
(in process; jobs stay queued): OpenAI's docs dataset with tools and weights, `integrations`,
and `jobs.list(metadata=...)`."""

from __future__ import annotations

import io
import json

import openai
import pytest

from app.jobs import listing
from tests.app.openai_compat.sdk import Sdk
from tests.support import openai_examples
from tests.support.data import chat_rows


def upload(sdk: Sdk, data: str, name: str = "train.jsonl") -> str:
    uploaded = sdk.client.files.create(file=(name, io.BytesIO(data.encode())), purpose="fine-tune")
    return uploaded.id


def test_the_openai_docs_dataset_uploads_unmodified_and_needs_a_tool_template(sdk: Sdk) -> None:
    file_id = upload(sdk, openai_examples.training_file())
    uploaded = sdk.client.files.wait_for_processing(file_id)
    assert uploaded.status == "processed", uploaded.status_details
    raw = sdk.client.files.with_raw_response.retrieve(file_id).http_response.json()
    assert raw["format"] == "chat" and raw["stats"]["rows"] == 2 * len(openai_examples.ALL_LINES)
    assert raw["stats"]["features"]["tool_calls"] == 8
    # tiny-llama's chat template has no tools: the job is refused when it is created
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.client.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id)
    assert refused.value.param == "model"
    assert refused.value.code == "unsupported_chat_template"
    assert (
        "The training file uses tool calling (in 8 or more rows), but tiny-llama never renders "
        "the tool definitions (`tools`)" in refused.value.message
    )
    # weights alone need no tool support
    weights = upload(sdk, openai_examples.training_file(openai_examples.WEIGHTS, copies=4))
    job = sdk.client.fine_tuning.jobs.create(model="tiny-llama", training_file=weights)
    assert job.status in ("validating_files", "queued")


def test_integrations_are_accepted_and_not_run(sdk: Sdk) -> None:
    job = sdk.client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload(sdk, "".join(f"{row}\n" for row in map(_json, chat_rows(12)))),
        integrations=[{"type": "wandb", "wandb": {"project": "migrating"}}],
    )
    raw = sdk.client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    assert raw["integrations"] == []


def test_list_filters_on_metadata_and_pages(sdk: Sdk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "_SCAN", 2)  # several reads per page
    train = upload(sdk, "".join(f"{row}\n" for row in map(_json, chat_rows(12))))
    jobs = sdk.client.fine_tuning.jobs
    teams = ["a", "b", "b", "a", "b", "a", "b"]
    ids = []
    for i, team in enumerate(teams):
        job = jobs.create(
            model="tiny-llama", training_file=train, metadata={"team": team, "n": str(i)}
        )
        ids.append(jobs.cancel(job.id).id)  # (the project's quota of unfinished jobs is 4)
    wanted = [job_id for job_id, team in zip(ids, teams, strict=True) if team == "a"][::-1]
    first = jobs.list(metadata={"team": "a"}, limit=2)
    assert [j.id for j in first.data] == wanted[:2] and first.has_more
    assert [j.id for j in first] == wanted  # the SDK pages on with after
    assert [j.id for j in jobs.list(metadata={"team": "a", "n": "3"})] == [ids[3]]
    assert list(jobs.list(metadata={"team": "c"})) == []
    assert len(list(jobs.list(limit=3))) == len(ids)  # no filter: every job


def _json(row: object) -> str:
    return json.dumps(row)
