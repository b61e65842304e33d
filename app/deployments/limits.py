"""Backpressure in the API: at most TUNERY_SERVING_MAX_CONCURRENCY requests in flight per
served model in each API process; the next one is answered 503 with Retry-After at once.

Without it every client past what the model can serve waits in line (on the inference
server, on connections, on the database) until it times out; with it the excess is told
within a millisecond to come back, and the requests that were admitted keep their latency.
A stream holds its slot until it ends. The inference server sheds load the same way when
its own queue is full (`overloaded`, passed through by app/inference_client.py).
"""

from __future__ import annotations

from types import TracebackType

from app.failures import APIError
from app.inference_client import OVERLOADED

RETRY_AFTER_SECONDS = 1


class Slot:
    """One admitted request; release() is idempotent, so every way out may call it."""

    def __init__(self, limits: ConcurrencyLimits, key: str) -> None:
        self._limits = limits
        self._key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits._release(self._key)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class ConcurrencyLimits:
    """Counts per model key; runs on the event loop only, so it needs no lock."""

    def __init__(self, per_model: int) -> None:
        self.per_model = per_model
        self._in_flight: dict[str, int] = {}

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def acquire(self, key: str) -> Slot:
        count = self._in_flight.get(key, 0)
        if count >= self.per_model:
            raise APIError(
                503,
                f"{key} is serving {count} requests from this API process, its limit "
                f"(TUNERY_SERVING_MAX_CONCURRENCY={self.per_model}); retry in "
                f"{RETRY_AFTER_SECONDS} second(s), send several inputs per request, or ask "
                "the operator to raise the limit or add inference capacity.",
                code=OVERLOADED,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._in_flight[key] = count + 1
        return Slot(self, key)

    def _release(self, key: str) -> None:
        count = self._in_flight.get(key, 0) - 1
        if count > 0:
            self._in_flight[key] = count
        else:
            self._in_flight.pop(key, None)
