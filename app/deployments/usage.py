"""Usage of each deployment (requests, prompt and completion tokens), counted in memory and
written to the database every TUNERY_USAGE_FLUSH_SECONDS and at shutdown.

A write per request would serialize every predict of a deployment on its row (a row lock on
Postgres, the one write lock on SQLite). Each API process instead adds what it counted
since the last flush, `requests_served = requests_served + :delta`, in one transaction; with
several API processes each adds its own share and none is lost. A read in this process
(`exact`) returns the database's figures plus what is not flushed yet, so it is exact here
at once; other processes' counts show up within one flush interval.

Everything here runs on the event loop (the database write goes to a thread), so the
counts need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# reads that raced a flush are read again; past these they keep the last figures
MAX_READ_ATTEMPTS = 10
MAX_FLUSH_WAIT_SECONDS = 2.0


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


def of_predictions(predictions: list[dict[str, Any]]) -> Usage:
    """One request's usage from the inference server's answer (tokens: causal LM only)."""
    return Usage(
        requests=1,
        prompt_tokens=sum(int(p.get("prompt_tokens") or 0) for p in predictions),
        completion_tokens=sum(int(p.get("completion_tokens") or 0) for p in predictions),
    )


class UsageCounter:
    """`write(deltas)` adds deltas to the rows and commits; it runs in a thread."""

    def __init__(self, write: Callable[[dict[str, Usage]], None]) -> None:
        self._write = write
        self._pending: dict[str, Usage] = {}
        self._flushed = 0  # flushes that ended (committed or not)
        self._flushing: asyncio.Event | None = None  # set when the running flush ends

    def record(self, dep_id: str, usage: Usage) -> None:
        self._pending.setdefault(dep_id, Usage()).add(usage)

    async def flush(self) -> None:
        if self._flushing is not None:
            await self._flushing.wait()
        if not self._pending:
            return
        deltas, self._pending = self._pending, {}
        done = self._flushing = asyncio.Event()
        try:
            await asyncio.to_thread(self._write, deltas)
        except Exception as exc:
            # not written: kept for the next flush (a commit whose outcome was lost with the
            # connection may count twice; the database refuses nothing else here)
            log.warning(
                "could not write usage counts (%s: %s); kept for the next flush",
                type(exc).__name__,
                exc,
            )
            for dep_id, usage in deltas.items():
                self.record(dep_id, usage)
        finally:
            self._flushed += 1
            self._flushing = None
            done.set()

    async def run(self, every: float) -> None:
        """Flush every `every` seconds until cancelled (the caller flushes once more)."""
        while True:
            await asyncio.sleep(every)
            await self.flush()

    async def exact(self, read: Callable[[], Awaitable[T]]) -> tuple[T, dict[str, Usage]]:
        """`read()` (rows from the database), read again until no flush overlapped it, and
        what was not flushed at that moment: together they count every request this
        process served exactly once. A flush the database keeps waiting (SQLite's write
        lock held by a worker, say) is waited for at most MAX_FLUSH_WAIT_SECONDS; past that
        the counts it carries are left out until it lands, never counted twice."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_FLUSH_WAIT_SECONDS
        attempts = 0
        while True:
            running = self._flushing
            if running is not None and loop.time() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(running.wait(), deadline - loop.time())
            running, flushed = self._flushing, self._flushed
            result = await read()
            attempts += 1
            settled = running is None and self._flushing is None and self._flushed == flushed
            if settled or attempts >= MAX_READ_ATTEMPTS or loop.time() >= deadline:
                return result, {k: Usage(**vars(v)) for k, v in self._pending.items()}
