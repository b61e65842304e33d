"""Serving a classification adapter: labels from tunery.json, scores, parity with peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.storage import ArtifactStore
from tests.worker.inference.artifacts import CLS_ADAPTER, LABELS, cls_spec, copy_artifact

TEXTS = ["the movie was great and i loved it", "this is awful sad and bad", "hello"]


def test_load_reports_time_and_memory(client: TestClient, bert_dir: Path) -> None:
    response = client.post("/internal/load", json={"model": cls_spec(bert_dir), "pin": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["key"] == "ft:cls"
    assert body["memory_bytes"] > 0 and body["load_seconds"] > 0
    (entry,) = client.get("/internal/models").json()["models"]
    assert entry["key"] == "ft:cls" and entry["pinned"] is True


def test_predict_uses_the_adapter_labels(client: TestClient, bert_dir: Path) -> None:
    response = client.post("/internal/predict", json={"model": cls_spec(bert_dir), "inputs": TEXTS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(TEXTS)
    for prediction in predictions:
        assert set(prediction["scores"]) == set(LABELS)
        assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        best = max(prediction["scores"], key=prediction["scores"].get)
        assert prediction["label"] == best
        assert prediction["score"] == prediction["scores"][best]


def test_top_k_keeps_the_best_labels(client: TestClient, bert_dir: Path) -> None:
    body = {"model": cls_spec(bert_dir), "inputs": TEXTS, "parameters": {"top_k": 2}}
    predictions = client.post("/internal/predict", json=body).json()["predictions"]
    for prediction in predictions:
        scores = list(prediction["scores"].values())
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        assert scores[0] == prediction["score"]


def test_served_scores_equal_a_plain_peft_load(
    client: TestClient, bert_dir: Path, store: ArtifactStore
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    artifact = store.local_dir(CLS_ADAPTER)
    base = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=len(LABELS))
    reference = PeftModel.from_pretrained(base, str(artifact)).eval()
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    with torch.inference_mode():
        logits = reference(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    expected = logits.softmax(-1)

    predictions = client.post(
        "/internal/predict", json={"model": cls_spec(bert_dir), "inputs": TEXTS}
    ).json()["predictions"]
    served = torch.tensor([[p["scores"][label] for label in LABELS] for p in predictions])
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-4)
    # a random head would sit near uniform; the adapter's trained head must show through
    assert not torch.allclose(served, torch.full_like(served, 1 / len(LABELS)), atol=1e-3)


def test_untuned_base_serves_with_generic_labels(client: TestClient, bert_dir: Path) -> None:
    spec = cls_spec(bert_dir, artifact=None, key="base:bert")
    response = client.post("/internal/predict", json={"model": spec, "inputs": ["hello"]})
    assert response.status_code == 200, response.text
    assert set(response.json()["predictions"][0]["scores"]) == {"LABEL_0", "LABEL_1"}


def test_merged_export_serves_the_same_scores(
    client: TestClient, bert_dir: Path, store: ArtifactStore
) -> None:
    copy_artifact(store, CLS_ADAPTER, "models/ftjob-export/model")
    spec = cls_spec(bert_dir, artifact="models/ftjob-export/model", key="ft:export")
    response = client.post("/internal/export", json={"model": spec, "format": "merged"})
    assert response.status_code == 200, response.text
    merged = response.json()["artifact"]
    assert merged == "models/ftjob-export/merged"

    def scores(model: dict[str, Any]) -> torch.Tensor:
        body = {"model": model, "inputs": TEXTS}
        predictions = client.post("/internal/predict", json=body).json()["predictions"]
        return torch.tensor([[p["scores"][label] for label in LABELS] for p in predictions])

    merged_spec = cls_spec(bert_dir, artifact=merged, key="ft:export:merged")
    torch.testing.assert_close(scores(merged_spec), scores(spec), atol=1e-5, rtol=1e-4)
