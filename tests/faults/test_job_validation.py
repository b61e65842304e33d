"""A job request with a hyperparameter out of range, an unknown field or a value of the
wrong type is refused with 400, `param` naming the field as the client wrote it and a
message saying what to change; nothing is created. Values are never coerced: `true` is no
batch size and "3" no epoch count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import SchemaTemplates
from tests.support.backends import copy_sqlite_database

pytestmark = pytest.mark.faults

HP = "method.supervised.hyperparameters"


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, schema_templates: SchemaTemplates
) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("validation")
    settings = Settings(
        data_dir=tmp / "data",
        database_url=copy_sqlite_database(schema_templates.url("sqlite"), tmp / "tunery.db"),
        models_dir=tiny_models,
        inference_url="http://127.0.0.1:9",
    )
    app = create_app(settings, reconciler=False)
    app.state.enqueue = lambda _job_id: None
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def file_id(client: TestClient) -> str:
    rows = "".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(12))
    response = client.post("/v1/files", files={"file": ("train.jsonl", rows.encode())})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def hp(**values: Any) -> dict[str, Any]:
    return {"method": {"type": "supervised", "supervised": {"hyperparameters": values}}}


# (what the request adds to a valid one, the param, words the message must hold)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # out of range
    ("epochs-0", hp(n_epochs=0), f"{HP}.n_epochs", "greater than or equal to 1"),
    ("epochs-101", hp(n_epochs=101), f"{HP}.n_epochs", "less than or equal to 100"),
    ("batch-0", hp(batch_size=0), f"{HP}.batch_size", "greater than or equal to 1"),
    ("lr-0", hp(learning_rate=0), f"{HP}.learning_rate", "greater than 0"),
    ("lr-2", hp(learning_rate=2), f"{HP}.learning_rate", "less than or equal to 1"),
    ("seq-4", hp(max_seq_length=4), f"{HP}.max_seq_length", "greater than or equal to 8"),
    ("split-0.9", hp(validation_split=0.9), f"{HP}.validation_split", "0.5"),
    ("warmup-0.6", hp(warmup_ratio=0.6), f"{HP}.warmup_ratio", "0.5"),
    ("patience-0", hp(early_stopping={"patience": 0}), f"{HP}.early_stopping.patience", "1"),
    ("lora-r-0", {"training_type": {"type": "lora", "r": 0}}, "training_type.r", "1"),
    ("dropout-1", {"training_type": {"type": "lora", "dropout": 1}}, "training_type.dropout", "1"),
    (
        "layers--1",
        {"training_type": {"type": "freeze", "trainable_layers": -1}},
        "training_type.trainable_layers",
        "0",
    ),
    ("seed--1", {"seed": -1}, "seed", "greater than or equal to 0"),
    ("suffix-41", {"suffix": "x" * 41}, "suffix", "at most 40 characters"),
    # not one of the allowed values
    ("scheduler", hp(lr_scheduler="exponential"), f"{HP}.lr_scheduler", "'cosine'"),
    ("metric", hp(best_metric="bleu"), f"{HP}.best_metric", "'accuracy'"),
    ("type", {"training_type": {"type": "prefix"}}, "training_type", "'lora'"),
    ("method", {"method": {"type": "reinforcement"}}, "method.type", "'supervised'"),
    ("suffix-path", {"suffix": "a/b"}, "suffix", "pattern"),
    # unknown fields, at every level
    ("top-level", {"epochs": 3}, "epochs", "unknown parameter"),
    ("hyperparameter", hp(dropout=0.1), f"{HP}.dropout", "unknown parameter"),
    (
        "early-stopping",
        hp(early_stopping={"patience": 2, "delta": 1}),
        f"{HP}.early_stopping.delta",
        "unknown parameter",
    ),
    ("full-r", {"training_type": {"type": "full", "r": 8}}, "training_type.r", "unknown"),
    # wrong types: never coerced
    ("epochs-str", hp(n_epochs="3"), f"{HP}.n_epochs", "valid integer"),
    ("epochs-float", hp(n_epochs=2.5), f"{HP}.n_epochs", "valid integer"),
    ("batch-bool", hp(batch_size=True), f"{HP}.batch_size", "valid integer"),
    ("lr-str", hp(learning_rate="0.1"), f"{HP}.learning_rate", "valid number"),
    ("checkpointing-str", hp(gradient_checkpointing="yes"), f"{HP}.gradient_checkpointing", "bool"),
    ("seed-bool", {"seed": True}, "seed", "valid integer"),
    ("seed-str", {"seed": "7"}, "seed", "valid integer"),
    ("r-str", {"training_type": {"type": "lora", "r": "8"}}, "training_type.r", "valid integer"),
    (
        "modules-int",
        {"training_type": {"type": "lora", "target_modules": 3}},
        "training_type.target_modules",
        "valid list",
    ),
    ("hp-list", {"method": {"type": "supervised", "supervised": {"hyperparameters": []}}}, HP, ""),
    ("metadata-int", {"metadata": {"team": 7}}, "metadata.team", "valid string"),
]


@pytest.mark.parametrize(
    ("name", "change", "param", "says"), CASES, ids=[case[0] for case in CASES]
)
def test_a_bad_job_request_is_a_400_that_names_the_field(
    client: TestClient, file_id: str, name: str, change: dict[str, Any], param: str, says: str
) -> None:
    before = client.get("/v1/fine_tuning/jobs").json()["data"]
    body = {"model": "tiny-bert", "training_file": file_id, **change}
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 400, (name, response.text)
    error = response.json()["error"]
    assert error["param"] == param, (name, error)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["message"].startswith(f"{param}: ") and says in error["message"], error
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == before


def test_the_request_itself_must_be_a_json_object(client: TestClient) -> None:
    for content in (b"{not json", b"[1, 2]", b'"a string"', b""):
        response = client.post(
            "/v1/fine_tuning/jobs", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"], response.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/deployments", {"model": 7}, "model"),
        ("/v1/deployments", {"model": "tiny-bert", "replicas": 2}, "replicas"),
        ("/v1/evaluations", {"model": "tiny-bert", "file": ["file-x"]}, "file"),
        ("/v1/evaluations", {"model": "tiny-bert", "file": "f", "compare_to": 1}, "compare_to"),
        ("/v1/predict", {"model": "tiny-bert", "inputs": ["hi"], "stream": "yes"}, "stream"),
        ("/v1/predict", {"model": "tiny-bert", "inputs": "hi"}, "inputs"),
    ],
)
def test_other_request_bodies_are_as_strict(
    client: TestClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(f"{param}: "), error
