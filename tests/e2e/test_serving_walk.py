"""Serving over HTTP against live servers: train -> deploy -> predict (and stream) ->
evaluate against the base -> export both forms and load them in plain peft/transformers
-> survive the inference server dying.

Runs embedded (`tunery serve`: SQLite + filesystem broker, the inference server a child that
serve restarts) and, where they are reachable, as separate api/worker/inference processes
on Postgres + Redis (the inference server killed and started again by the test).
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import torch

from tests.support import backends, live
from tests.support.data import qa_rows, sentiment_rows, write_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LABELS = ["negative", "positive"]


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


def upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        response = client.post(
            "/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processed", response.json()
    return str(response.json()["id"])


def train(client: httpx.Client, server: live.LiveServer, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    try:
        done = live.wait_for(
            client,
            f"/v1/fine_tuning/jobs/{response.json()['id']}",
            {"succeeded", "failed", "cancelled"},
        )
    except TimeoutError:
        raise AssertionError(server.log_tail()) from None
    assert done["status"] == "succeeded", (done, server.log_tail())
    return done


def lora_job(model: str, file_id: str, epochs: int, lr: float) -> dict[str, Any]:
    return {
        "model": model,
        "training_file": file_id,
        "seed": 3,
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": epochs,
                    "batch_size": 8,
                    "learning_rate": lr,
                    "max_seq_length": 48,
                }
            },
        },
        "training_type": {"type": "lora", "r": 8, "alpha": 16},
    }


def deploy(client: httpx.Client, model: str) -> str:
    response = client.post("/v1/deployments", json={"model": model})
    assert response.status_code == 200, response.text
    dep = live.wait_for(client, f"/v1/deployments/{response.json()['id']}", {"ready", "failed"})
    assert dep["status"] == "ready", dep
    assert dep["load_seconds"] > 0 and dep["memory_bytes"] > 0
    return str(dep["id"])


def evaluate(client: httpx.Client, model: str, file_id: str, base: str) -> dict[str, Any]:
    response = client.post(
        "/v1/evaluations", json={"model": model, "file": file_id, "compare_to": base}
    )
    assert response.status_code == 200, response.text
    done = live.wait_for(
        client, f"/v1/evaluations/{response.json()['id']}", {"succeeded", "failed"}
    )
    assert done["status"] == "succeeded", done
    return done


def download(client: httpx.Client, model: str, form: str, target: Path) -> Path:
    response = client.get(f"/v1/models/{model}/content", params={"format": form})
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(target / form, filter="data")
    (directory,) = list((target / form).iterdir())
    assert not list(directory.rglob("*.bin")) and not list(directory.rglob("*.pt"))
    return directory


def check_model_card(directory: Path, base: str, file_id: str, metric: str) -> None:
    card = (directory / "README.md").read_text()
    assert f"base_model: {json.dumps(base)}" in card
    for fact in (file_id, "n_epochs", "learning_rate", "training_type.r", metric):
        assert fact in card, (fact, card)


def sse(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        data = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_classifier_serving_evaluation_and_export(
    server: live.LiveServer, tmp_path: Path, tiny_models: Path
) -> None:
    rows = sentiment_rows(48)
    texts = [r["text"] for r in rows[:8]]
    with server.client(timeout=120) as client:
        file_id = upload(client, write_jsonl(tmp_path / "train.jsonl", rows))
        job = train(client, server, lora_job("tiny-bert", file_id, epochs=4, lr=5e-3))
        name = job["fine_tuned_model"]

        dep = deploy(client, name)
        response = client.post(f"/v1/deployments/{dep}/predict", json={"inputs": texts})
        assert response.status_code == 200, response.text
        served = response.json()["predictions"]
        assert all(set(p["scores"]) == set(LABELS) for p in served)
        top = client.post(
            "/v1/predict", json={"model": name, "inputs": texts[:2], "parameters": {"top_k": 1}}
        )
        assert [len(p["scores"]) for p in top.json()["predictions"]] == [1, 1]

        result = evaluate(client, name, file_id, base="tiny-bert")
        assert result["rows"] == 48
        tuned, base = result["metrics"], result["compare_to_metrics"]
        assert set(tuned["per_class"]) == set(LABELS) and len(tuned["confusion_matrix"]) == 2
        assert tuned["accuracy"] > base["accuracy"]
        assert result["difference"]["accuracy"] == pytest.approx(
            tuned["accuracy"] - base["accuracy"]
        )

        adapter_dir = download(client, name, "adapter", tmp_path)
        merged_dir = download(client, name, "merged", tmp_path)
    check_model_card(adapter_dir, "tiny-bert", file_id, "accuracy")
    check_model_card(merged_dir, "tiny-bert", file_id, "accuracy")
    assert (adapter_dir / "adapter_model.safetensors").exists()
    assert (merged_dir / "model.safetensors").exists()

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = json.loads((adapter_dir / "tunery.json").read_text())["labels"]
    assert labels == LABELS
    base_model = AutoModelForSequenceClassification.from_pretrained(
        tiny_models / "tiny-bert", num_labels=len(labels)
    )
    adapter_model = PeftModel.from_pretrained(base_model, adapter_dir).eval()
    merged_model = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged_model.config.id2label == dict(enumerate(labels))
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.inference_mode():
        from_adapter = adapter_model(**batch).logits
        from_merged = merged_model(**batch).logits
    torch.testing.assert_close(from_merged, from_adapter, atol=1e-4, rtol=1e-4)
    service = torch.tensor([[p["scores"][label] for label in labels] for p in served])
    torch.testing.assert_close(from_adapter.softmax(-1), service, atol=1e-4, rtol=1e-4)


def test_causal_lm_serving_streaming_evaluation_and_export(
    server: live.LiveServer, tmp_path: Path, tiny_models: Path
) -> None:
    rows = qa_rows(48)
    prompt = rows[0]["prompt"]
    greedy = {"temperature": 0, "max_new_tokens": 6}
    with server.client(timeout=120) as client:
        file_id = upload(client, write_jsonl(tmp_path / "qa.jsonl", rows))
        job = train(client, server, lora_job("tiny-llama", file_id, epochs=4, lr=1e-2))
        name = job["fine_tuned_model"]

        dep = deploy(client, name)
        path = f"/v1/deployments/{dep}/predict"
        response = client.post(path, json={"inputs": [prompt], "parameters": greedy})
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        *deltas, final = sse(client, path, {"inputs": [prompt], "parameters": greedy})
        assert "".join(d["text"] for d in deltas) == prediction["text"]
        assert final["finish_reason"] == prediction["finish_reason"]

        result = evaluate(client, name, file_id, base="tiny-llama")
        tuned, base = result["metrics"], result["compare_to_metrics"]
        assert tuned["loss"] < base["loss"] and result["difference"]["loss"] < 0
        assert result["difference"]["perplexity"] < 0
        assert 0 <= tuned["exact_match"] <= 1

        adapter_dir = download(client, name, "adapter", tmp_path)
        merged_dir = download(client, name, "merged", tmp_path)
        _survives_the_inference_server_dying(server, client, path, prompt, prediction)
    check_model_card(adapter_dir, "tiny-llama", file_id, "perplexity")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_models / "tiny-llama"), adapter_dir
    ).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        from_adapter = adapter_model(**encoded).logits
        from_merged = merged_model(**encoded).logits
        out = merged_model.generate(**encoded, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(from_merged, from_adapter, atol=1e-4, rtol=1e-4)
    new_tokens = out[0, encoded["input_ids"].shape[1] :]
    text = cast(str, tokenizer.decode(new_tokens, skip_special_tokens=True))
    # the service's greedy answer is what plain transformers says (up to the first eos)
    assert text.startswith(prediction["text"]), (text, prediction)


def _survives_the_inference_server_dying(
    server: live.LiveServer,
    client: httpx.Client,
    path: str,
    prompt: str,
    expected: dict[str, Any],
) -> None:
    body = {"inputs": [prompt], "parameters": {"temperature": 0, "max_new_tokens": 6}}
    if "inference" in server.procs:  # distributed: the test is the supervisor
        server.stop("inference", signal.SIGKILL)
        down = client.post(path, json=body)
        port = server.env["TUNERY_INFERENCE_URL"].rsplit(":", 1)[1]
        server.start("inference", ["inference", "--port", port])
    else:  # embedded: `tunery serve` restarts its inference child by itself
        os.kill(_inference_child(server.procs["serve"].pid), signal.SIGKILL)
        down = client.post(path, json=body)
    assert down.status_code == 503, down.text
    assert int(down.headers["Retry-After"]) > 0
    deadline = time.monotonic() + 120
    while True:
        response = client.post(path, json=body)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        assert response.status_code == 503, response.text
        time.sleep(0.2)
    assert response.status_code == 200, (response.text, server.log_tail())
    assert response.json()["predictions"] == [expected]


def _inference_child(serve_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == serve_pid and b"inference" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no inference child of {serve_pid}")
