"""Models that must not be served: mismatched adapters, pickle weights, custom code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from app.storage import ArtifactStore
from tests.worker.inference.artifacts import (
    CLS_ADAPTER,
    LM_FULL,
    cls_spec,
    copy_artifact,
    lm_spec,
)

QUERY_A = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"


def edit_tensors(directory: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def load_error(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/internal/load", json={"model": spec})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "model_load_failed" and error["param"] == "model"
    return error


def shrink_rank(tensors: dict[str, torch.Tensor]) -> None:
    for key in list(tensors):
        if "lora_A" in key:
            tensors[key] = tensors[key][:2].contiguous()
        elif "lora_B" in key:
            tensors[key] = tensors[key][:, :2].contiguous()


def add_layer_the_base_lacks(tensors: dict[str, torch.Tensor]) -> None:
    tensors[QUERY_A.replace("layer.0", "layer.7")] = tensors[QUERY_A].clone()


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("rank", shrink_rank, "size mismatch"),
        ("extra", add_layer_the_base_lacks, "match nothing in the base"),
        ("missing", lambda tensors: tensors.pop(QUERY_A), "missing from the adapter"),
    ],
)
def test_adapter_tensors_that_do_not_fit_the_base_fail_loudly(
    client: TestClient,
    store: ArtifactStore,
    bert_dir: Path,
    name: str,
    change: Callable[[dict[str, torch.Tensor]], None],
    expected: str,
) -> None:
    key = f"models/bad-{name}/model"
    edit_tensors(copy_artifact(store, CLS_ADAPTER, key), change)
    error = load_error(client, cls_spec(bert_dir, artifact=key, key=f"bad:{name}"))
    assert expected in error["message"] and key in error["message"]
    # nothing half-loaded is left serving under that key
    assert client.get("/internal/models").json()["models"] == []


def test_adapter_for_modules_the_base_lacks_fails(
    client: TestClient, store: ArtifactStore, bert_dir: Path
) -> None:
    key = "models/bad-target/model"
    directory = copy_artifact(store, CLS_ADAPTER, key)
    edit_json(directory / "adapter_config.json", lambda c: c.update(target_modules=["q_proj"]))
    error = load_error(client, cls_spec(bert_dir, artifact=key, key="bad:target"))
    assert "does not fit its base model" in error["message"]


def test_predict_on_a_broken_model_is_a_422_too(
    client: TestClient, store: ArtifactStore, bert_dir: Path
) -> None:
    key = "models/bad-predict/model"
    edit_tensors(copy_artifact(store, CLS_ADAPTER, key), shrink_rank)
    spec = cls_spec(bert_dir, artifact=key, key="bad:predict")
    response = client.post("/internal/predict", json={"model": spec, "inputs": ["hi"]})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "model_load_failed"


def test_pickle_only_weights_are_refused(
    client: TestClient, store: ArtifactStore, llama_dir: Path
) -> None:
    key = "models/pickle/model"
    directory = copy_artifact(store, LM_FULL, key)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"never unpickled")
    error = load_error(client, lm_spec(llama_dir, artifact=key, key="bad:pickle"))
    assert "pickle" in error["message"] and "safetensors" in error["message"]


def test_pickle_only_adapter_is_refused(
    client: TestClient, store: ArtifactStore, bert_dir: Path
) -> None:
    key = "models/pickle-adapter/model"
    directory = copy_artifact(store, CLS_ADAPTER, key)
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")
    error = load_error(client, cls_spec(bert_dir, artifact=key, key="bad:pickle-adapter"))
    assert "pickle" in error["message"]


def test_python_files_are_refused(
    client: TestClient, store: ArtifactStore, llama_dir: Path
) -> None:
    key = "models/code/model"
    directory = copy_artifact(store, LM_FULL, key)
    (directory / "modeling_evil.py").write_text("import os\n")
    error = load_error(client, lm_spec(llama_dir, artifact=key, key="bad:code"))
    assert "modeling_evil.py" in error["message"]


def test_auto_map_is_refused(client: TestClient, store: ArtifactStore, llama_dir: Path) -> None:
    key = "models/auto-map/model"
    directory = copy_artifact(store, LM_FULL, key)
    edit_json(
        directory / "config.json",
        lambda c: c.update(auto_map={"AutoModelForCausalLM": "evil.EvilModel"}),
    )
    error = load_error(client, lm_spec(llama_dir, artifact=key, key="bad:auto-map"))
    assert "auto_map" in error["message"]


def test_a_missing_artifact_or_base_is_named(
    client: TestClient, llama_dir: Path, tmp_path: Path
) -> None:
    error = load_error(client, lm_spec(llama_dir, artifact="models/nope/model", key="bad:none"))
    assert "models/nope/model" in error["message"] and "not found" in error["message"]
    missing_base = {**lm_spec(llama_dir, artifact=None), "base_model_dir": str(tmp_path / "x")}
    assert "does not exist" in load_error(client, missing_base)["message"]


def test_an_artifact_of_another_task_is_refused(client: TestClient, bert_dir: Path) -> None:
    spec = {**cls_spec(bert_dir, artifact=LM_FULL), "key": "bad:task"}
    assert "causal-lm" in load_error(client, spec)["message"]
