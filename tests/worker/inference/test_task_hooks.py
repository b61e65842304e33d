"""The inference server serves a task through its plugin's predictor hook: a task that
worker/inference has never heard of is checked, batched and answered by its own hooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import torch

import task_plugins
from app.storage import ArtifactStore
from task_plugins.base import PredictorHook
from tests.worker.inference.artifacts import cls_spec
from worker.inference import tasks
from worker.inference.loading import ModelSpec
from worker.inference.predictors import Classification, PredictionInputError, prepare_texts
from worker.inference.service import InferenceService

NEW_TASK = "reversed-classification"


def prepare_reversed(tokenizer: Any, inputs: Sequence[Any], config: Any) -> list[list[int]]:
    """A new task's prepare hook: classifies each text with its words in reverse order."""
    return prepare_texts(tokenizer, [" ".join(reversed(text.split())) for text in inputs], config)


def finish_marked(probs: Sequence[float], labels: Sequence[str], top_k: int | None) -> Any:
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"label": labels[best], "score": float(probs[best]), "hook": NEW_TASK}


@pytest.fixture
def new_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    plugin = dataclasses.replace(
        task_plugins.get("classification"),
        name=NEW_TASK,
        predictor=PredictorHook(
            engine="batch",
            prepare=f"{__name__}:prepare_reversed",
            forward="worker.inference.predictors:text_probabilities",
            finish=f"{__name__}:finish_marked",
            output="worker.inference.predictors:Classification",
            parameters=frozenset({"top_k"}),
            inputs=frozenset({"text"}),
        ),
    )
    monkeypatch.setattr(task_plugins, "TASKS", (*task_plugins.TASKS, plugin))
    tasks.batch_hooks.cache_clear()
    yield NEW_TASK
    tasks.batch_hooks.cache_clear()


def test_a_new_task_is_served_through_its_hooks(
    new_task: str, store: ArtifactStore, bert_dir: Path
) -> None:
    service = InferenceService(store, max_batch_size=8)
    new = ModelSpec(**{**cls_spec(bert_dir, artifact=None, key="base:new"), "task": new_task})
    plain = ModelSpec(**cls_spec(bert_dir, artifact=None, key="base:plain"))
    # the base has no classification head: each load draws one, the same from the same seed
    for spec in (new, plain):
        torch.manual_seed(0)
        service.load(spec)
    texts = ["the movie was great", "a dull and slow film", "fine acting , weak plot"]
    got = cast(list[dict[str, Any]], service.predict(new, texts, {"top_k": 1}))
    expected = cast(
        list[Classification],
        service.predict(plain, [" ".join(reversed(t.split())) for t in texts], {}),
    )
    assert [p["hook"] for p in got] == [new_task] * 3
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    for answer, reference in zip(got, expected, strict=True):
        assert answer["score"] == pytest.approx(reference["score"], abs=1e-5)
    # its hook's parameters and input kinds are what the server accepts
    with pytest.raises(PredictionInputError, match="'temperature' does not apply") as refused:
        service.predict(new, texts, {"temperature": 0.5})
    assert refused.value.param == "parameters.temperature"
    with pytest.raises(PredictionInputError, match=r"inputs\[1\]: a reversed-classification"):
        service.predict(new, ["fine", {"messages": [{"role": "user", "content": "hi"}]}], {})
    with pytest.raises(PredictionInputError, match="stream applies to models that generate"):
        tasks.check_request(new_task, ["fine"], {}, stream=True)


def test_the_engine_of_a_base_is_its_task_hooks_engine(
    store: ArtifactStore, bert_dir: Path, llama_dir: Path
) -> None:
    from tests.worker.inference.artifacts import lm_spec
    from worker.inference.batching import MicroBatcher
    from worker.inference.scheduler import DecodeEngine

    service = InferenceService(store)
    classifier = service.load(ModelSpec(**cls_spec(bert_dir, artifact=None, key="b")))
    generator = service.load(ModelSpec(**lm_spec(llama_dir, artifact=None, key="l")))
    assert isinstance(service.engine_of(classifier), MicroBatcher)
    assert isinstance(service.engine_of(generator), DecodeEngine)
    for task in task_plugins.TASKS:
        assert (task.predictor.engine == "decode") == task.predictor.streams
