"""Continuous batching: sequences join a running decode batch at token boundaries, leave it
when they finish, and each still gets exactly what it gets alone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from app.storage import ArtifactStore
from tests.worker.inference.artifacts import LM_ADAPTER, lm_spec, variant_of
from worker.inference.jobs import Job
from worker.inference.loading import LoadedModel, ModelSpec
from worker.inference.predictors import Generation
from worker.inference.service import InferenceService

LONG = {"temperature": 0, "max_new_tokens": 200}
SHORT = {"temperature": 0, "max_new_tokens": 5}
PROMPTS = ["hello world", "the movie was", "numbers 0 1 2", "what a wonderful"]


def base_spec(llama_dir: Path) -> ModelSpec:
    return ModelSpec(**lm_spec(llama_dir, None, key="base:llama"))


def generate(
    service: InferenceService, spec: ModelSpec, prompt: str, parameters: dict[str, Any]
) -> Generation:
    (prediction,) = service.predict(spec, [prompt], parameters)
    return cast(Generation, prediction)


@contextmanager
def held(service: InferenceService, specs: Sequence[ModelSpec]) -> Iterator[list[LoadedModel]]:
    with ExitStack() as stack:
        yield [stack.enter_context(service.using(spec)) for spec in specs]


def submit_together(
    service: InferenceService, requests: Sequence[tuple[LoadedModel, str, dict[str, Any]]]
) -> list[Future[list[Any]]]:
    """Queue the requests from the engine's own thread between two steps, so that all of
    them are admitted at the same token boundary, into one decode batch."""
    engine = service.engine_of(requests[0][0])
    jobs = [Job(model=m, inputs=[text], parameters=p) for m, text, p in requests]
    queued = threading.Event()

    def enqueue() -> None:
        for job in jobs:
            engine.submit(job)
        queued.set()

    assert engine.call(enqueue)
    assert queued.wait(30)
    return [job.future for job in jobs]


def test_short_requests_that_join_a_long_stream_finish_first_and_match_alone(
    store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_running=8)
    spec = base_spec(llama_dir)
    long_alone = generate(service, spec, "hello world", LONG)
    assert long_alone["finish_reason"] == "length"  # it runs all 200 steps
    short_alone = [generate(service, spec, p, SHORT) for p in PROMPTS]

    finished: list[str] = []
    events: list[Any] = []
    shorts: list[Future[list[Any]]] = []
    streamed = threading.Event()
    with held(service, [spec]) as (loaded,):
        engine = service.engine_of(loaded)

        def note_done(prompt: str, _: Future[list[Any]]) -> None:
            finished.append(prompt)

        def emit(event: Any) -> None:
            events.append(event)
            if isinstance(event, dict) and "text" in event and not shorts:
                # on the engine's thread, while the long stream is mid-way: the short requests
                # are queued before the next step, so they join at that token boundary
                for prompt in PROMPTS:
                    job = Job(model=loaded, inputs=[prompt], parameters=SHORT)
                    job.future.add_done_callback(partial(note_done, prompt))
                    shorts.append(engine.submit(job))
            if event is None:
                finished.append("long")
                streamed.set()

        service.open_stream(spec, "hello world", LONG, emit)
        assert streamed.wait(60)
    assert [s.result(timeout=30)[0] for s in shorts] == short_alone
    assert finished[-1] == "long" and sorted(finished[:-1]) == sorted(PROMPTS)
    *deltas, closing, end = events
    assert "".join(d["text"] for d in deltas) == long_alone["text"] and end is None
    assert closing == {k: v for k, v in long_alone.items() if k != "text"}
    # the short ones decoded in the same forwards as the long one
    assert engine.stats().largest_batch == 1 + len(PROMPTS)
    assert engine.stats().running == 0


def test_rows_of_different_adapters_and_options_share_a_batch_and_match_alone(
    store: ArtifactStore, llama_dir: Path
) -> None:
    variant = variant_of(store, LM_ADAPTER, "models/ftjob-lora-cb/model", seed=9)
    service = InferenceService(store, max_models=8)
    specs = [
        ModelSpec(**lm_spec(llama_dir, LM_ADAPTER, key="ft:lora")),
        ModelSpec(**lm_spec(llama_dir, variant, key="ft:lora-v")),
        base_spec(llama_dir),
    ]
    options: list[dict[str, Any]] = [
        {"temperature": 0, "max_new_tokens": 12},
        {"temperature": 0, "max_new_tokens": 3},
        {"temperature": 0, "max_new_tokens": 12, "stop": ["e"]},
        {"temperature": 0.8, "top_p": 0.9, "seed": 5, "max_new_tokens": 12},
    ]
    cases = [(s, p, o) for s in specs for p in PROMPTS[:2] for o in options]
    alone = [service.predict(s, [p], o)[0] for s, p, o in cases]
    by_adapter = {
        s.key: [a for (c, _, _), a in zip(cases, alone, strict=True) if c == s] for s in specs
    }
    assert by_adapter["ft:lora"] != by_adapter["ft:lora-v"] != by_adapter["base:llama"]

    with held(service, specs) as loaded:
        models = dict(zip([s.key for s in specs], loaded, strict=True))
        futures = submit_together(service, [(models[s.key], p, o) for s, p, o in cases])
        together = [f.result(timeout=60)[0] for f in futures]
        engine = service.engine_of(loaded[0])
    assert together == alone
    assert engine.stats().largest_batch == len(cases)
    assert loaded[0].shared.mixes_adapters


def test_a_seeded_request_samples_the_same_text_alone_and_in_a_batch(
    store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store)
    spec = base_spec(llama_dir)
    seeded = {"temperature": 1.2, "top_p": 0.95, "seed": 1234, "max_new_tokens": 40}
    rng_state = torch.random.get_rng_state()
    (alone,) = service.predict(spec, ["hello"], seeded)
    assert service.predict(spec, ["hello"], {**seeded, "seed": 4321})[0] != alone
    neighbours: list[dict[str, Any]] = [
        {"temperature": 1.0, "max_new_tokens": 40},  # unseeded sampling
        {"temperature": 0.7, "seed": 1, "max_new_tokens": 40},
        {"temperature": 0, "max_new_tokens": 30},
    ]
    with held(service, [spec]) as (loaded,):
        requests = [(loaded, "hello", seeded)] + [
            (loaded, p, o) for p in PROMPTS for o in neighbours
        ]
        futures = submit_together(service, requests)
        results = [f.result(timeout=60)[0] for f in futures]
    assert results[0] == alone
    # the request's own generator drew every number: torch's global stream is untouched
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_a_cancelled_stream_leaves_the_batch_and_frees_its_slot(
    store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_running=1)
    spec = base_spec(llama_dir)
    events: list[Any] = []
    ended = threading.Event()
    cancel: list[threading.Event] = []

    def emit(event: Any) -> None:
        events.append(event)
        if isinstance(event, dict) and "text" in event:
            cancel[0].set()  # the client went away after its first piece of text
        if event is None:
            ended.set()

    cancel.append(service.open_stream(spec, "hello world", LONG, emit))
    assert ended.wait(60)
    closing = events[-2]
    assert isinstance(closing, dict) and closing["completion_tokens"] < 20
    # the only slot is free again: a request after it runs at once instead of waiting behind
    assert generate(service, spec, "the movie was", SHORT)["completion_tokens"] == 5
    assert service.engine_of(service.load(spec)).stats().running == 0


def test_a_cancelled_request_that_never_started_is_dropped(
    store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_running=1)
    spec = base_spec(llama_dir)
    with held(service, [spec]) as (loaded,):
        engine = service.engine_of(loaded)
        with blocked(engine.call):
            job = Job(model=loaded, inputs=["hello"], parameters=LONG)
            engine.submit(job)
            job.cancel.set()
        assert _wait_done(job.future).cancelled()
        assert engine.stats().waiting == 0


@contextmanager
def blocked(call: Callable[[Callable[[], None]], bool]) -> Iterator[None]:
    """Hold the engine's thread until the block ends (work queued on it waits for a gate)."""
    gate, inside = threading.Event(), threading.Event()

    def wait() -> None:
        inside.set()
        gate.wait(60)

    assert call(wait)
    assert inside.wait(30)
    try:
        yield
    finally:
        gate.set()


def _wait_done(future: Future[Any]) -> Future[Any]:
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(30)
    return future


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_each_family_decodes_as_transformers_generate_does(
    store: ArtifactStore, family_dirs: dict[str, Path], family: str
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = family_dirs[family]
    service = InferenceService(store)
    spec = ModelSpec(f"base:{family}", "causal-lm", str(directory), None)
    prompts = ["hi", "question: what is the capital of france? answer:", *PROMPTS]
    with held(service, [spec]) as (loaded,):
        futures = submit_together(
            service, [(loaded, p, {"temperature": 0, "max_new_tokens": 16}) for p in prompts]
        )
        batched = [f.result(timeout=60)[0] for f in futures]

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    for prompt, got in zip(prompts, batched, strict=True):
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **encoded, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new = out[0, encoded["input_ids"].shape[1] :].tolist()
        eos = tokenizer.eos_token_id
        new = new[: new.index(eos)] if eos in new else new
        assert got["text"] == tokenizer.decode(new, skip_special_tokens=True), prompt


def test_a_cancelled_request_settles_even_with_inputs_not_yet_started(
    store: ArtifactStore, llama_dir: Path
) -> None:
    service = InferenceService(store, max_running=1)
    spec = base_spec(llama_dir)
    with held(service, [spec]) as (loaded,):
        engine = service.engine_of(loaded)
        job = Job(model=loaded, inputs=["hello world", "the movie was"], parameters=LONG)
        engine.submit(job)
        wait_until(lambda: engine.stats().steps > 2)  # the first input runs, the second waits
        job.cancel.set()
        first, second = _wait_done(job.future).result()
    assert 0 < first["completion_tokens"] < 200 and second["completion_tokens"] == 0
    assert engine.stats().running == 0 and engine.stats().waiting == 0


def wait_until(check: Callable[[], bool]) -> None:
    pause = threading.Event()
    for _ in range(300):
        if check():
            return
        pause.wait(0.1)
    raise AssertionError("condition not reached in 30 s")
