"""Dynamic micro-batching for classification: waiting requests on one base share a forward.

Each classification base gets a MicroBatcher: a queue and one thread that owns the base's
forwards. The thread takes the first waiting request and every request queued behind it, up
to `max_batch_size` inputs, and runs them together. It waits for more (at most
`max_wait_ms`) only while fewer requests are queued than the busiest batch of the last
second held: a lone client never waits, and a crowd fills the batches it asks for.

Requests of different adapters on the same base share a batch through peft's mixed-adapter
batches, and requests with different top_k too (it is applied after the forward).
Generation runs in scheduler.DecodeEngine instead: its requests take many forwards each.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from worker.inference.engine import UNLOADED, EngineLimits, ThreadedEngine
from worker.inference.errors import ModelLoadError
from worker.inference.jobs import Job, prepare
from worker.inference.predictors import Classification
from worker.inference.shared import SharedModel
from worker.inference.tasks import batch_hooks

log = logging.getLogger(__name__)

RECENT_SECONDS = 1.0


class MicroBatcher(ThreadedEngine):
    thread_label = "batcher"

    def __init__(self, shared: SharedModel, limits: EngineLimits, name: str = "") -> None:
        if limits.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        super().__init__(shared, limits, name)
        self.max_batch_size = limits.max_batch_size
        self.max_wait = max(0.0, limits.max_wait_ms) / 1000
        self._carry: Job | Callable[[], None] | None = None
        self._recent: deque[tuple[float, int]] = deque()

    # -- collecting --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._inbox.get()
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
            self._run(self._collect(first))

    def _collect(self, first: Job) -> list[Job]:
        batch = [first]
        rows = len(first.inputs)
        target = self._expected_requests()
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_batch_size:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if len(batch) >= target or remaining <= 0:
                    break
                try:
                    job = self._inbox.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                # run what was collected, then stop: the loop fails whatever came later
                self._closed = True
                self._inbox.put(None)
                break
            if not isinstance(job, Job) or rows + len(job.inputs) > self.max_batch_size:
                self._carry = job
                break
            batch.append(job)
            rows += len(job.inputs)
        return batch

    def _run(self, batch: list[Job]) -> None:
        self.admission.leave(len(batch))
        self._note(len(batch))
        ready = _prepared(batch)
        self._running = sum(len(job.rows or ()) for job in ready)
        self.rows += self._running
        try:
            results = _classify(self.shared, ready, self.max_batch_size)
        except BaseException as exc:  # never let the thread die with requests waiting
            log.exception("batch on %s failed", self._name)
            for job in ready:
                job.fail(exc)
        else:
            for job, result in zip(ready, results, strict=True):
                job.resolve(result)
        finally:
            self._running = 0

    def _expected_requests(self) -> int:
        """How many requests a batch should hold: the most a batch of the last second held."""
        now = time.perf_counter()
        while self._recent and now - self._recent[0][0] > RECENT_SECONDS:
            self._recent.popleft()
        return max((size for _, size in self._recent), default=1)

    def _note(self, size: int) -> None:
        self._recent.append((time.perf_counter(), size))
        self.steps += 1
        self.largest_batch = max(self.largest_batch, size)

    def _fail_queued(self) -> None:
        pending: list[Job | Callable[[], None] | None] = [self._carry]
        self._carry = None
        while True:
            try:
                pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for job in pending:
            if isinstance(job, Job):
                self.admission.leave()
                job.fail(ModelLoadError(UNLOADED))


# -- running ------------------------------------------------------------------------------


def _prepared(batch: list[Job]) -> list[Job]:
    """The jobs that tokenized; the others get their error."""
    ready = []
    for job in batch:
        try:
            prepare(job)
        except Exception as exc:
            job.fail(exc)
            continue
        ready.append(job)
    return ready


def chunks(shared: SharedModel, adapters: Sequence[str | None], max_rows: int) -> list[list[int]]:
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
    rows: list[Any] = []
    adapters: list[str | None] = []
    owners: list[int] = []
    for index, job in enumerate(jobs):
        assert job.rows is not None
        rows += job.rows
        adapters += [job.model.adapter_name] * len(job.rows)
        owners += [index] * len(job.rows)
    if not rows:
        return [[] for _ in jobs]
    pad_id = getattr(shared.config, "pad_token_id", None)
    if not isinstance(pad_id, int):
        pad_id = getattr(jobs[0].model.tokenizer, "pad_token_id", None) or 0
    probs: list[list[float] | None] = [None] * len(rows)
    hooks = batch_hooks(shared.task)
    for chunk in chunks(shared, adapters, max_rows):
        chosen = [adapters[i] for i in chunk]
        # the models on one base share its tokenizer or processor (an adapter saves the base's)
        processor = jobs[owners[chunk[0]]].model.tokenizer
        with shared.running(chosen) as (module, extra):
            out = hooks.forward(module, processor, [rows[i] for i in chunk], pad_id, extra)
        for i, row in zip(chunk, out.tolist(), strict=True):
            probs[i] = row
    results: list[list[Classification]] = [[] for _ in jobs]
    for i, row_probs in enumerate(probs):
        assert row_probs is not None
        job = jobs[owners[i]]
        results[owners[i]].append(hooks.finish(row_probs, job.model.labels or [], job.top_k))
    return list(results)
