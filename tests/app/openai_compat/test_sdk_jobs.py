"""fine_tuning.jobs and models through the official openai SDK, parsed strictly into its types.

Jobs stay queued here (the fixture records enqueued ids instead of running them): these
tests are about the shapes and the paging; tests/e2e/test_openai_sdk.py trains for real.
"""

from __future__ import annotations

import io
import json
from typing import Any

import openai
import pytest
from openai.types import Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

from tests.app.openai_compat.sdk import Sdk
from tests.support.data import chat_rows


def upload_chat(sdk: Sdk, n: int = 12) -> str:
    data = "".join(json.dumps(row) + "\n" for row in chat_rows(n)).encode()
    return sdk.client.files.create(file=("chat.jsonl", io.BytesIO(data)), purpose="fine-tune").id


def test_create_takes_openai_fields_and_tunery_fields_through_extra_body(sdk: Sdk) -> None:
    train, validation = upload_chat(sdk), upload_chat(sdk, 10)
    job = sdk.client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train,
        validation_file=validation,
        suffix="support-bot",
        seed=42,
        metadata={"team": "ml"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": "auto",
                    "learning_rate_multiplier": 0.5,
                }
            },
        },
        extra_body={"training_type": {"type": "lora", "r": 4}},
    )
    assert sdk.api.enqueued == [job.id]
    raw = sdk.client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    strict = FineTuningJob.model_validate(raw)  # every field and literal as the SDK types it
    assert strict.status in ("validating_files", "queued") and strict.model == "tiny-llama"
    # suffix is not in the SDK's FineTuningJob model: pydantic keeps it as an extra field
    assert (strict.seed, strict.suffix, strict.metadata) == (42, "support-bot", {"team": "ml"})  # type: ignore[attr-defined]
    assert (strict.training_file, strict.validation_file) == (train, validation)
    hp = strict.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, 8, 0.5)  # auto: 8
    assert strict.method is not None and strict.method.type == "supervised"
    assert strict.method.supervised is not None
    assert strict.method.supervised.hyperparameters is not None
    assert strict.method.supervised.hyperparameters.n_epochs == 2
    assert raw["training_type"]["r"] == 4  # Tunery's own fields ride along


def test_the_older_top_level_hyperparameters_and_auto_values(sdk: Sdk) -> None:
    job = sdk.client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload_chat(sdk),
        hyperparameters={"n_epochs": "auto", "batch_size": 2, "learning_rate_multiplier": "auto"},
    )
    assert job.hyperparameters.batch_size == 2
    # "auto" is resolved when the job is created (the epochs from the size of the file)
    assert isinstance(job.hyperparameters.n_epochs, int) and job.hyperparameters.n_epochs >= 1
    assert job.hyperparameters.learning_rate_multiplier == 1


def test_list_cancel_and_events_page_on_with_after(sdk: Sdk) -> None:
    train = upload_chat(sdk)
    jobs = sdk.client.fine_tuning.jobs
    ids = [jobs.create(model="tiny-llama", training_file=train).id for _ in range(3)]

    first = jobs.list(limit=1)
    assert [j.id for j in first.data] == [ids[-1]] and first.has_more
    assert [j.id for j in first] == ids[::-1]  # iterating fetches the following pages

    cancelled = jobs.cancel(ids[0])
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.ConflictError) as again:
        jobs.cancel(ids[0])
    assert again.value.param == "fine_tuning_job_id"
    assert again.value.code == "job_not_cancellable"
    assert again.value.response.headers["x-should-retry"] == "false"  # no pointless retries

    events = jobs.list_events(ids[0], limit=1)
    assert len(events.data) == 1 and events.has_more
    messages = [e.message for e in events]
    assert messages[0] == "Job cancelled before it started."
    assert messages[-1].startswith(f"Created fine-tuning job {ids[0]}")
    raw = jobs.with_raw_response.list_events(ids[0]).http_response.json()
    for event in raw["data"]:
        FineTuningJobEvent.model_validate(event)


def test_missing_job_is_not_found_naming_the_parameter(sdk: Sdk) -> None:
    for call in (
        sdk.client.fine_tuning.jobs.retrieve,
        sdk.client.fine_tuning.jobs.cancel,
        sdk.client.fine_tuning.jobs.list_events,
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call("ftjob-missing")
        assert missing.value.param == "fine_tuning_job_id"
        assert "ftjob-missing" in missing.value.message


def test_bad_requests_name_the_field(sdk: Sdk) -> None:
    train = upload_chat(sdk)
    jobs = sdk.client.fine_tuning.jobs
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "gpt-9"}, "model"),
        ({"training_file": "file-nope"}, "training_file"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
        ),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"extra_body": {"training_type": {"type": "lora", "r": 0}}}, "training_type.r"),
        ({"extra_body": {"epochs": 3}}, "epochs"),
    ]
    for change, param in cases:
        body = {"model": "tiny-llama", "training_file": train, **change}
        with pytest.raises(openai.BadRequestError) as refused:
            jobs.create(**body)
        assert refused.value.param == param, (change, refused.value.body)


def test_checkpoints_list_parses(sdk: Sdk) -> None:
    job = sdk.client.fine_tuning.jobs.create(model="tiny-llama", training_file=upload_chat(sdk))
    page = sdk.client.fine_tuning.jobs.checkpoints.list(job.id)
    assert list(page) == [] and not page.has_more  # nothing trained yet
    with pytest.raises(openai.NotFoundError):
        sdk.client.fine_tuning.jobs.checkpoints.list("ftjob-missing")


def test_models_list_retrieve_delete(sdk: Sdk) -> None:
    raw = sdk.client.models.with_raw_response.list().http_response.json()
    models = [Model.model_validate(m) for m in raw["data"]]
    assert {"tiny-llama", "tiny-bert"} <= {m.id for m in models}
    assert {m.id for m in sdk.client.models.list()} == {m.id for m in models}
    assert sdk.client.models.retrieve("tiny-llama").owned_by == "tunery"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.client.models.retrieve("ft:tiny-llama:gone:ftjob-x")
    assert missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as base:
        sdk.client.models.delete("tiny-llama")
    assert base.value.param == "model" and "base model" in base.value.message


def test_pause_and_resume_of_a_job_that_is_not_running_are_conflicts(sdk: Sdk) -> None:
    job = sdk.client.fine_tuning.jobs.create(model="tiny-llama", training_file=upload_chat(sdk))
    with pytest.raises(openai.ConflictError) as pause:
        sdk.client.fine_tuning.jobs.pause(job.id)
    assert pause.value.param == "fine_tuning_job_id" and "running" in pause.value.message
    with pytest.raises(openai.ConflictError) as resume:
        sdk.client.fine_tuning.jobs.resume(job.id)
    assert resume.value.param == "fine_tuning_job_id" and "paused" in resume.value.message
