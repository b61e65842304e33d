"""The seam between the inference service and whatever runs requests on a loaded base.

An Engine takes Jobs for the models on one SharedModel and settles each Job's future. Two
implementations exist:

- `batching.MicroBatcher` (classification): one forward per batch of waiting requests;
- `scheduler.DecodeEngine` (causal LM): continuous batching, sequences join and leave a
  running decode batch at token boundaries.

The inference service picks one per base (`InferenceService._new_engine`). This is the
seam where a causal-LM base on a CUDA GPU could be handed to vLLM instead (its async engine,
one LoRA request per adapter): an engine that takes the same Jobs, applies the same queue
limit and settles the same futures, with no change to the service, the server or the
cache. It is not built: nothing here can run or test it.

`Admission` is the queue limit both engines apply: a request that would wait behind
`max_queue` others on the same base is refused at once with `Overloaded` (the server answers
503 with Retry-After), instead of joining a queue it would time out in.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from worker.inference.errors import ModelLoadError, Overloaded
from worker.inference.jobs import Job

if TYPE_CHECKING:
    from worker.inference.shared import SharedModel


@dataclass(frozen=True)
class EngineLimits:
    max_batch_size: int = 32  # classification: inputs per forward
    max_wait_ms: float = 5.0  # classification: the longest a request waits for company
    max_running: int = 32  # generation: sequences in one decode batch
    max_queue: int = 128  # requests waiting (not yet started) per base, beyond which: 503


@dataclass(frozen=True)
class EngineStats:
    waiting: int  # requests accepted and not started
    running: int  # sequences (generation) or inputs (classification) being computed now
    steps: int  # forwards run: batches, or prefill and decode steps
    largest_batch: int  # the most rows one forward held
    rows: int = 0  # rows summed over every forward: rows / steps is the mean batch


class Engine(Protocol):
    def submit(self, job: Job) -> Future[list[Any]]:
        """Queue the job; raises Overloaded (queue full) or ModelLoadError (closed)."""
        ...

    def call(self, work: Callable[[], None]) -> bool:
        """Run work on the engine's thread between forwards (detaching an adapter must not
        overlap one); False when the engine is closed."""
        ...

    def close(self) -> None:
        """Stop; queued and running requests fail with ModelLoadError."""
        ...

    def stats(self) -> EngineStats: ...


UNLOADED = "the model was unloaded while the request waited; send it again"


class Admission:
    """Counts the requests accepted but not started, and refuses one beyond max_queue."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue = max_queue
        self._waiting = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self._waiting >= self.max_queue:
                raise Overloaded(
                    f"the model is at capacity: {self._waiting} requests already wait for it; "
                    "retry after Retry-After seconds, or send fewer requests at once"
                )
            self._waiting += 1

    def leave(self, count: int = 1) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - count)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting


class ThreadedEngine:
    """What both engines share: one thread, started on first use, that owns the base's
    forwards and reads an inbox of jobs, work to run between forwards, and None (stop).
    A subclass writes `_loop`, counts `steps`, `rows`, `largest_batch` and `_running`, and calls
    `admission.leave` as it starts the requests it took."""

    thread_label = "engine"

    def __init__(self, shared: SharedModel, limits: EngineLimits, name: str = "") -> None:
        self.shared = shared
        self.admission = Admission(limits.max_queue)
        self._name = name or shared.key
        self._inbox: queue.Queue[Job | Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._running = 0
        self.steps = 0
        self.rows = 0
        self.largest_batch = 0

    def submit(self, job: Job) -> Future[list[Any]]:
        if self._closed:
            raise ModelLoadError(UNLOADED)
        self.admission.enter()
        self._ensure_thread()
        self._inbox.put(job)
        return job.future

    def call(self, work: Callable[[], None]) -> bool:
        if self._closed:
            return False
        self._ensure_thread()
        self._inbox.put(work)
        return True

    def close(self) -> None:
        self._closed = True
        self._inbox.put(None)

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=self.admission.waiting,
            running=self._running,
            steps=self.steps,
            largest_batch=self.largest_batch,
            rows=self.rows,
        )

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"{self.thread_label} {self._name}", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        raise NotImplementedError
