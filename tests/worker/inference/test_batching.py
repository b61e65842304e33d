"""Batching: concurrent requests share forwards, each still gets its own answer."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from app.storage import ArtifactStore
from tests.worker.inference.artifacts import cls_spec, lm_spec
from worker.inference.loading import ModelSpec
from worker.inference.predictors import Classification
from worker.inference.service import InferenceService

TEXTS = [f"the movie was great number {i}" for i in range(6)]


def test_concurrent_classifications_share_forwards_up_to_the_batch_size(
    store: ArtifactStore, bert_dir: Path
) -> None:
    service = InferenceService(store, max_batch_size=8, max_wait_ms=50)
    spec = ModelSpec(**cls_spec(bert_dir))
    alone = [
        cast(list[Classification], service.predict(spec, [text], {"top_k": 1 + i % 3}))
        for i, text in enumerate(TEXTS)
    ]
    engine = service.engine_of(service.load(spec))
    with ThreadPoolExecutor(max_workers=24) as pool:
        futures = [
            pool.submit(service.predict, spec, [text], {"top_k": 1 + i % 3})
            for i, text in enumerate(TEXTS * 4)
        ]
        results = [cast(list[Classification], f.result()) for f in futures]
    # top_k differs per request yet they batch: it is applied after the forward
    for got, expected in zip(results, alone * 4, strict=True):
        assert got[0]["label"] == expected[0]["label"]
        assert got[0]["scores"].keys() == expected[0]["scores"].keys()
        for label, p in expected[0]["scores"].items():
            assert abs(got[0]["scores"][label] - p) < 1e-5
    assert 1 < engine.stats().largest_batch <= 8
    # the base's report counts the forwards and the inputs they held: 6 alone, 24 together
    (base,) = service.base_reports()
    assert base.batched_rows == len(TEXTS) * 5
    assert len(TEXTS) + 3 <= base.batches < len(TEXTS) * 5
    assert base.largest_batch == engine.stats().largest_batch


def test_a_request_larger_than_the_batch_size_still_runs(
    store: ArtifactStore, bert_dir: Path
) -> None:
    service = InferenceService(store, max_batch_size=4)
    spec = ModelSpec(**cls_spec(bert_dir))
    many = [f"text number {i}" for i in range(11)]
    batched = cast(list[Classification], service.predict(spec, many, {}))
    one_by_one = [cast(list[Classification], service.predict(spec, [text], {}))[0] for text in many]
    assert [p["label"] for p in batched] == [p["label"] for p in one_by_one]


def test_generation_requests_with_any_parameters_share_decode_steps(
    store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_batch_size=32, max_wait_ms=50)
    spec = ModelSpec(**lm_spec(llama_dir))
    variants: list[dict[str, Any]] = [
        {"temperature": 0, "max_new_tokens": 6},
        {"temperature": 0, "max_new_tokens": 3},
        {"temperature": 0, "max_new_tokens": 6, "stop": ["e"]},
        {"temperature": 1.0, "seed": 3, "max_new_tokens": 6},
    ]
    prompts = ["hello world", "what a wonderful day"]
    alone = [service.predict(spec, prompts, params) for params in variants]
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(service.predict, spec, prompts, p) for p in variants * 4]
        for future, expected in zip(futures, alone * 4, strict=True):
            assert future.result() == expected
    # every request ran as it runs alone, yet the sequences shared forwards
    assert service.engine_of(service.load(spec)).stats().largest_batch > 2


def test_a_lone_request_does_not_wait_for_company(store: ArtifactStore, bert_dir: Path) -> None:
    # with nobody else around the batcher runs at once; it waits only under concurrency
    service = InferenceService(store, max_batch_size=32, max_wait_ms=3000)
    spec = ModelSpec(**cls_spec(bert_dir))
    service.predict(spec, ["warm up"], {})
    started = time.perf_counter()
    for _ in range(3):
        service.predict(spec, ["hello"], {})
    assert time.perf_counter() - started < 3.0
