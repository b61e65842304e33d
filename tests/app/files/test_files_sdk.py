"""Files through the official openai SDK: every call parses into the SDK's own types."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import openai
import pytest
from openai.types import FileDeleted, FileObject

from tests.app.openai_compat.sdk import Sdk
from tests.support.data import chat_rows

if TYPE_CHECKING:
    from openai._legacy_response import LegacyAPIResponse


def chat_file(n: int) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in chat_rows(n)).encode()


def raw_json(response: openai.APIResponse[Any] | LegacyAPIResponse[Any]) -> dict:
    body: dict = response.http_response.json()
    return body


def test_create_wait_retrieve_content_delete(sdk: Sdk) -> None:
    files = sdk.client.files
    data = chat_file(12)
    created = files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert created.status == "processed" and created.purpose == "fine-tune"
    assert created.bytes == len(data) and created.filename == "train.jsonl"

    # processing is done at upload: the SDK's poll returns at once
    assert files.wait_for_processing(created.id, poll_interval=0.1, max_wait_seconds=5) == created
    raw = files.with_raw_response.retrieve(created.id)
    FileObject.model_validate(raw_json(raw))  # strict: every field and literal as OpenAI's
    assert files.content(created.id).read() == data

    deleted = files.delete(created.id)
    assert deleted == FileDeleted(id=created.id, deleted=True, object="file")
    with pytest.raises(openai.NotFoundError) as missing:
        files.retrieve(created.id)
    assert missing.value.param == "file_id"


def test_list_pages_on_with_after_in_both_orders(sdk: Sdk) -> None:
    ids = [
        sdk.client.files.create(
            file=(f"f{i}.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune"
        ).id
        for i in range(3)
    ]
    first = sdk.client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    # iterating a page fetches the next ones with after=<last id>
    assert [f.id for f in first] == ids[::-1]
    assert [f.id for f in sdk.client.files.list(limit=1, order="asc")] == ids
    assert [f.id for f in sdk.client.files.list(purpose="fine-tune")] == ids[::-1]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.client.files.list(after="file-gone")
    assert bad.value.param == "after"


def test_a_bad_file_is_processed_into_an_error_that_names_the_line(sdk: Sdk) -> None:
    rows = chat_rows(12)
    rows[4] = {"messages": [{"role": "user", "content": "only a question"}]}
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    created = sdk.client.files.create(file=("bad.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert created.status == "error"
    assert (
        created.status_details
        == "line 5: 'messages' has no assistant message: nothing to learn from"
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.client.fine_tuning.jobs.create(model="tiny-llama", training_file=created.id)
    assert refused.value.param == "training_file"
    assert "line 5" in refused.value.message


def test_unknown_purpose_and_oversize_upload(sdk: Sdk) -> None:
    with pytest.raises(openai.BadRequestError) as purpose:
        sdk.client.files.create(file=("a.jsonl", io.BytesIO(chat_file(10))), purpose="batch")
    assert purpose.value.param == "purpose"
    big = b'{"text": "x", "label": "a"}\n' * 5000  # over the fixture's 64 KiB limit
    with pytest.raises(openai.APIStatusError) as too_large:
        sdk.client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="fine-tune")
    assert too_large.value.status_code == 413
    assert too_large.value.code == "file_too_large"
