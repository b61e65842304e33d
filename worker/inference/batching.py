"""Dynamic micro-batching: requests for models on one shared base run in one forward.

Each SharedModel gets a Batcher: a queue and one thread that owns the model's forwards.
The thread takes the first waiting request and every request queued behind it, up to
`max_batch_size` inputs, and runs them together. It waits for more (at most
`max_wait_ms`) only while fewer requests are queued than the busiest batch of the last
second held: a lone client never waits, and a crowd fills the batches it asks for.

Requests of different adapters on the same base share a batch through peft's mixed-adapter
batches. Classification requests always fit together (top_k is applied per request after
the forward). Generation requests share a batch only when their decoding options match,
and a seeded sampled request always runs alone, since the rows of a batch draw from one
random stream. A streamed request runs alone, its tokens going out as they come.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from worker.inference.predictors import (
    Classification,
    Generation,
    GenerationOptions,
    PromptInput,
    check_context,
    class_probabilities,
    encode_prompt,
    encode_texts,
    eos_ids,
    finish,
    generate_tokens,
    max_input_tokens,
    to_classification,
)
from worker.inference.shared import ModelLoadError
from worker.inference.streaming import DeltaStreamer

if TYPE_CHECKING:
    from worker.inference.loading import LoadedModel
    from worker.inference.shared import SharedModel

log = logging.getLogger(__name__)

RECENT_SECONDS = 1.0


@dataclass
class StreamSink:
    emit: Callable[[str], None]  # a text delta
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class Job:
    """One request: its model, its inputs, and where its result goes. The batcher's thread
    tokenizes it (`prepare`) unless the caller already did."""

    model: LoadedModel
    inputs: Sequence[PromptInput]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    stream: StreamSink | None = None
    future: Future[list[Any]] = field(default_factory=Future)
    rows: list[list[int]] | None = None
    top_k: int | None = None  # classification
    options: GenerationOptions | None = None  # generation


def prepare(job: Job) -> None:
    """Tokenize the job's inputs and check what only the tokens tell (prompt length, a chat
    template); raises PredictionInputError."""
    if job.rows is not None:
        return
    given = {k: v for k, v in job.parameters.items() if v is not None}
    loaded = job.model
    config = loaded.shared.config
    with loaded.tokenizer_lock:
        if loaded.spec.task == "classification":
            texts = [item for item in job.inputs if isinstance(item, str)]
            job.top_k = given.get("top_k")
            job.rows = encode_texts(loaded.tokenizer, texts, max_input_tokens(config))
            return
        options = GenerationOptions.of(given)
        prompts = [encode_prompt(loaded.tokenizer, item, i) for i, item in enumerate(job.inputs)]
    check_context(config, prompts, options.max_new_tokens)
    job.options = options
    job.rows = prompts


class Batcher:
    def __init__(
        self, shared: SharedModel, max_batch_size: int, max_wait_ms: float, name: str = ""
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.shared = shared
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_wait_ms) / 1000
        # requests, work that must not overlap a forward (detaching an adapter), None: stop
        self._queue: queue.Queue[Job | Callable[[], None] | None] = queue.Queue()
        self._carry: Job | Callable[[], None] | None = None
        self._recent: deque[tuple[float, int]] = deque()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._name = name or shared.key
        # figures for tests and the bench
        self.batches = 0
        self.largest_batch = 0

    def submit(self, job: Job) -> Future[list[Any]]:
        if self._closed:
            raise ModelLoadError("the model was unloaded while the request waited; send it again")
        self._ensure_thread()
        self._queue.put(job)
        return job.future

    def call(self, work: Callable[[], None]) -> bool:
        """Run work on the batcher's thread between batches; False when it is closed (the
        caller runs it itself, or nothing needs it any more)."""
        if self._closed:
            return False
        self._ensure_thread()
        self._queue.put(work)
        return True

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"batcher {self._name}", daemon=True
                )
                self._thread.start()

    # -- collecting --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is None:
                self._fail_queued()
                return
            if not isinstance(first, Job):
                try:
                    first()
                except Exception:
                    log.exception("work on %s's thread failed", self._name)
                continue
            batch = self._collect(first)
            if batch is None:
                self._fail_queued()
                return
            self._note(len(batch))
            try:
                run_batch(self.shared, _prepared(batch), self.max_batch_size)
            except BaseException as exc:  # never let the thread die with requests waiting
                log.exception("batch on %s failed", self._name)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _collect(self, first: Job) -> list[Job] | None:
        batch = [first]
        if first.stream is not None:
            return batch
        rows = len(first.inputs)
        target = self._expected_requests()
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if len(batch) >= target or remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                self._closed = True
                self._run_then_stop(batch)
                return None
            if (
                not isinstance(job, Job)
                or job.stream is not None
                or rows + len(job.inputs) > self.max_batch_size
            ):
                self._carry = job
                break
            batch.append(job)
            rows += len(job.inputs)
        return batch

    def _run_then_stop(self, batch: list[Job]) -> None:
        try:
            run_batch(self.shared, _prepared(batch), self.max_batch_size)
        except BaseException as exc:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)

    def _expected_requests(self) -> int:
        """How many requests a batch should hold: the most a batch of the last second held."""
        now = time.perf_counter()
        while self._recent and now - self._recent[0][0] > RECENT_SECONDS:
            self._recent.popleft()
        return max((size for _, size in self._recent), default=1)

    def _note(self, size: int) -> None:
        self._recent.append((time.perf_counter(), size))
        self.batches += 1
        self.largest_batch = max(self.largest_batch, size)

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, Job) and not job.future.done():
                job.future.set_exception(
                    ModelLoadError("the model was unloaded while the request waited; send it again")
                )


# -- running ------------------------------------------------------------------------------


def _prepared(batch: list[Job]) -> list[Job]:
    """The jobs that tokenized; the others get their error."""
    ready = []
    for job in batch:
        try:
            prepare(job)
        except Exception as exc:
            job.future.set_exception(exc)
            continue
        ready.append(job)
    return ready


def run_batch(shared: SharedModel, batch: Sequence[Job], max_rows: int) -> None:
    """Run every job of the batch and settle its future (result or exception)."""
    if shared.task == "classification":
        _settle(batch, lambda: _classify(shared, batch, max_rows))
        return
    groups: dict[Hashable, list[Job]] = {}
    for job in batch:
        groups.setdefault(_generation_group(job), []).append(job)
    for jobs in groups.values():
        if jobs[0].stream is not None:
            _settle(jobs, partial(_stream, shared, jobs[0]))
        else:
            _settle(jobs, partial(_generate, shared, jobs, max_rows))


def _settle(jobs: Sequence[Job], work: Callable[[], list[list[Any]]]) -> None:
    try:
        results = work()
    except BaseException as exc:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)
        return
    for job, result in zip(jobs, results, strict=True):
        job.future.set_result(result)


def _rows_of(jobs: Sequence[Job]) -> tuple[list[list[int]], list[str | None], list[int]]:
    rows: list[list[int]] = []
    adapters: list[str | None] = []
    owners: list[int] = []
    for index, job in enumerate(jobs):
        assert job.rows is not None
        rows += job.rows
        adapters += [job.model.adapter_name] * len(job.rows)
        owners += [index] * len(job.rows)
    return rows, adapters, owners


def _chunks(shared: SharedModel, adapters: Sequence[str | None], max_rows: int) -> list[list[int]]:
    """Row indices per forward: up to max_rows each, one adapter per forward unless peft can
    mix this base's adapters in one batch."""
    if len(set(adapters)) > 1 and not shared.mixes_adapters:
        by_adapter: dict[str | None, list[int]] = {}
        for index, name in enumerate(adapters):
            by_adapter.setdefault(name, []).append(index)
        groups = list(by_adapter.values())
    else:
        groups = [list(range(len(adapters)))]
    return [g[i : i + max_rows] for g in groups for i in range(0, len(g), max_rows)]


def _classify(shared: SharedModel, jobs: Sequence[Job], max_rows: int) -> list[list[Any]]:
    rows, adapters, owners = _rows_of(jobs)
    pad_id = shared.config.pad_token_id
    if not isinstance(pad_id, int):
        pad_id = jobs[0].model.tokenizer.pad_token_id or 0
    probs: list[list[float] | None] = [None] * len(rows)
    for chunk in _chunks(shared, adapters, max_rows):
        chosen = [adapters[i] for i in chunk]
        with shared.running(chosen) as (module, extra):
            out = class_probabilities(module, [rows[i] for i in chunk], pad_id, extra)
        for i, row in zip(chunk, out.tolist(), strict=True):
            probs[i] = row
    results: list[list[Classification]] = [[] for _ in jobs]
    for i, row_probs in enumerate(probs):
        assert row_probs is not None
        job = jobs[owners[i]]
        results[owners[i]].append(to_classification(row_probs, job.model.labels or [], job.top_k))
    return list(results)


def _generation_group(job: Job) -> Hashable:
    options = job.options or GenerationOptions()
    if job.stream is not None or (options.sampled and options.seed is not None):
        return ("alone", id(job))
    tokenizer = job.model.tokenizer
    # rows of one generate() call share pad, eos and the tokenizer that reads stop strings
    signature: tuple[Any, ...] = (len(tokenizer), tokenizer.pad_token_id, tuple(_eos(job)))
    if options.stop:
        signature += (id(tokenizer),)
    return (options, signature)


def _eos(job: Job) -> list[int]:
    return eos_ids(job.model.shared.model, job.model.tokenizer)


def _generate(shared: SharedModel, jobs: Sequence[Job], max_rows: int) -> list[list[Any]]:
    first = jobs[0]
    options = first.options or GenerationOptions()
    tokenizer = first.model.tokenizer
    eos = _eos(first)
    rows, adapters, owners = _rows_of(jobs)
    new: list[list[int] | None] = [None] * len(rows)
    for chunk in _chunks(shared, adapters, max_rows):
        chosen = [adapters[i] for i in chunk]
        with shared.running(chosen) as (module, extra):
            out = generate_tokens(
                module,
                [rows[i] for i in chunk],
                options,
                pad_id=tokenizer.pad_token_id,
                eos=eos,
                tokenizer=tokenizer,
                extra=extra,
            )
        for i, tokens in zip(chunk, out, strict=True):
            new[i] = tokens
    results: list[list[Generation]] = [[] for _ in jobs]
    for i, produced in enumerate(new):
        assert produced is not None
        results[owners[i]].append(finish(tokenizer, produced, len(rows[i]), eos, options))
    return list(results)


def _stream(shared: SharedModel, job: Job) -> list[list[Generation]]:
    assert job.stream is not None
    options = job.options or GenerationOptions()
    tokenizer = job.model.tokenizer
    eos = _eos(job)
    streamer = DeltaStreamer(tokenizer, eos, options.stop, job.stream.emit)
    assert job.rows is not None
    with shared.running([job.model.adapter_name]) as (module, extra):
        (tokens,) = generate_tokens(
            module,
            job.rows,
            options,
            pad_id=tokenizer.pad_token_id,
            eos=eos,
            tokenizer=tokenizer,
            extra=extra,
            streamer=streamer,
            cancel=job.stream.cancel,
        )
    result = finish(tokenizer, tokens, len(job.rows[0]), eos, options)
    streamer.finish(result["text"])
    return [[result]]
