"""Evaluation scores: the trainer's metric definitions, checked against plain computations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from app.failures import Failure
from app.storage import ArtifactStore
from tests.support.data import write_jsonl
from tests.worker.inference.artifacts import LABELS, LM_FULL, cls_spec, copy_artifact, lm_spec
from worker.evaluation.run import evaluate
from worker.inference.loading import ModelSpec
from worker.inference.predictors import Classification
from worker.inference.service import InferenceService

TEXTS = [
    "the movie was great and i loved it",
    "this is awful sad and bad",
    "hello world",
    "what a wonderful happy day",
    "the film was terrible and boring",
    "numbers 0 1 2 3",
]


def spec_for(
    store: ArtifactStore, tmp_path: Path, rows: list[dict[str, Any]], **models: Any
) -> dict:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    return {
        **models,
        "file": {"path": str(path), "filename": "rows.jsonl"},
        "storage_url": store.url,
        "cache_dir": str(tmp_path / "cache"),
        "result_path": str(tmp_path / "result.json"),
    }


def test_classification_metrics_match_the_served_predictions(
    store: ArtifactStore, bert_dir: Path, tmp_path: Path
) -> None:
    truth = [LABELS[i % 3] for i in range(len(TEXTS))] + ["unheard-of"]
    rows = [{"text": t, "label": label} for t, label in zip([*TEXTS, "hi"], truth, strict=True)]
    tuned = cls_spec(bert_dir)
    base = cls_spec(bert_dir, artifact=None, key="base:bert")
    result = evaluate(spec_for(store, tmp_path, rows, model=tuned, compare_to=base))

    served = cast(
        list[Classification],
        InferenceService(store).predict(ModelSpec(**tuned), [r["text"] for r in rows], {}),
    )
    predicted = [p["label"] for p in served]
    metrics = result["metrics"]
    assert result["rows"] == len(rows)
    expected_accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(rows)
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    # a label the model cannot say is counted as a miss, with its support
    assert metrics["labels"] == [*LABELS, "unheard-of"]
    assert metrics["unknown_labels"] == ["unheard-of"]
    assert metrics["per_class"]["unheard-of"]["support"] == 1
    matrix = metrics["confusion_matrix"]
    assert len(matrix) == 4 and sum(map(sum, matrix)) == len(rows)
    for key in ("precision", "recall", "f1", "loss"):
        assert isinstance(metrics[key], float)
    # the loss is the mean cross-entropy of the rows whose label the model knows
    probs = [p["scores"][t] for p, t in zip(served, truth, strict=True) if t in LABELS]
    assert metrics["loss"] == pytest.approx(-torch.tensor(probs).log().mean().item(), rel=1e-4)

    other = result["compare_metrics"]
    assert other["labels"][:2] == ["LABEL_0", "LABEL_1"]  # an untrained head says no label
    assert other["accuracy"] == 0.0
    assert result["difference"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert set(result["difference"]["per_class"]) == set(LABELS) | {"unheard-of"}


def _plain_completion_loss(model_dir: Path, rows: list[dict[str, str]]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + completion + [tokenizer.eos_token_id]])
        with torch.inference_mode():
            logits = model(ids).logits[0, :-1]
        targets = ids[0, 1:]
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        scored = losses[len(prompt) - 1 :]  # the completion and eos tokens only
        total += float(scored.sum())
        count += len(scored)
    return total / count


def _stopping_copy(store: ArtifactStore, prompt: str) -> tuple[str, str]:
    """A copy of LM_FULL whose eos is a token its greedy continuation of prompt reaches: it
    stops there, as a tuned model stops after its completion. Returns (key, completion)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = store.local_dir(LM_FULL)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    # the first token not seen before, after at least two: generation stops right there
    stop_at = next(i for i in range(2, len(new)) if new[i] not in new[:i])
    key = "models/ftjob-stopping/model"
    directory = copy_artifact(store, LM_FULL, key)
    config = GenerationConfig.from_pretrained(directory)
    config.eos_token_id = new[stop_at]
    config.save_pretrained(directory)
    return key, cast(str, tokenizer.decode(new[:stop_at], skip_special_tokens=True))


def test_causal_lm_loss_perplexity_and_exact_match(
    store: ArtifactStore, llama_dir: Path, tmp_path: Path
) -> None:
    prompt = "question: what is the capital of france? answer:"
    key, completion = _stopping_copy(store, prompt)
    spec = lm_spec(llama_dir, key, key="ft:stopping")
    rows = [
        {"prompt": prompt, "completion": completion},
        {"prompt": "say hi", "completion": " something else entirely"},
    ]
    assert completion.strip()
    result = evaluate(spec_for(store, tmp_path, rows, model=spec, compare_to=None))
    metrics = result["metrics"]
    assert result["compare_metrics"] is None and result["difference"] is None
    assert metrics["exact_match"] == pytest.approx(1 / 2)
    expected = _plain_completion_loss(store.local_dir(LM_FULL), rows)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-4)
    assert 0 <= metrics["token_accuracy"] <= 1


def test_chat_rows_compare_an_adapter_with_its_base(
    store: ArtifactStore, llama_dir: Path, tmp_path: Path
) -> None:
    from tests.worker.inference.artifacts import LM_ADAPTER

    rows = [
        {
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in [("say hello", "hello world"), ("count", "1 2 3")]
    ]
    tuned = lm_spec(llama_dir, LM_ADAPTER, key="ft:lora")
    base = lm_spec(llama_dir, None, key="base:llama")
    result = evaluate(spec_for(store, tmp_path, rows, model=tuned, compare_to=base))
    mine, theirs = result["metrics"], result["compare_metrics"]
    assert mine["loss"] != theirs["loss"]  # the adapter changed the model
    assert result["difference"]["loss"] == pytest.approx(mine["loss"] - theirs["loss"])
    assert result["difference"]["perplexity"] == pytest.approx(
        mine["perplexity"] - theirs["perplexity"]
    )


def test_a_file_of_the_wrong_format_fails_with_its_reason(
    store: ArtifactStore, llama_dir: Path, tmp_path: Path
) -> None:
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    spec = spec_for(store, tmp_path, rows, model=lm_spec(llama_dir), compare_to=None)
    with pytest.raises(Failure) as failure:
        evaluate(spec)
    assert failure.value.code == "invalid_file" and "classification format" in failure.value.message


def test_the_child_process_writes_its_result_or_its_error(
    store: ArtifactStore, bert_dir: Path, tmp_path: Path
) -> None:
    rows = [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(TEXTS)]
    spec = spec_for(store, tmp_path, rows, model=cls_spec(bert_dir), compare_to=None)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    run = [sys.executable, "-m", "worker.evaluation.run", str(spec_path)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    result = json.loads(Path(spec["result_path"]).read_text())
    assert result["rows"] == len(rows) and 0 <= result["metrics"]["accuracy"] <= 1

    spec["model"] = cls_spec(bert_dir, artifact="models/missing/model")
    spec_path.write_text(json.dumps(spec))
    assert subprocess.run(run, capture_output=True).returncode == 1
    error = json.loads(Path(spec["result_path"]).read_text())["error"]
    assert error["code"] == "model_load_failed" and "models/missing/model" in error["message"]
    assert error["param"] == "model"
