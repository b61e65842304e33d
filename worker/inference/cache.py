"""An in-process cache of loaded models: one load per key, LRU eviction, pinning.

Loading takes seconds to minutes and memory is the scarce resource, so the cache makes sure
concurrent requests for a model that is not loaded yet wait for a single load, and evicts
the least recently used unpinned models once it holds more than `max_models` or more than
`memory_budget_bytes`. It knows nothing of torch: entries only report their size.

Sharing one base between several adapters would add a second level here (bases keyed by
base directory, adapters referencing them, a base evicted with its last adapter); entries
are sized by what they report, so such a split needs no change to the eviction rule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypedDict, TypeVar

log = logging.getLogger(__name__)


class Sized(Protocol):
    @property
    def memory_bytes(self) -> int: ...

    @property
    def load_seconds(self) -> float: ...


M = TypeVar("M", bound=Sized)


class EntryStats(TypedDict):
    key: str
    pinned: bool
    load_seconds: float
    memory_bytes: int
    requests_served: int
    loaded_at: float
    last_used: float


@dataclass
class _Entry(Generic[M]):
    value: M
    pinned: bool
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    requests_served: int = 0


class _Pending:
    """A load in progress that other callers wait on instead of loading again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class ModelCache(Generic[M]):
    def __init__(
        self,
        max_models: int,
        memory_budget_bytes: int | None = None,
        on_evict: Callable[[str, M], None] | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self._on_evict = on_evict
        self._lock = threading.Lock()
        # ordered from least to most recently used
        self._entries: OrderedDict[str, _Entry[M]] = OrderedDict()
        self._pending: dict[str, _Pending] = {}

    def get_or_load(self, key: str, loader: Callable[[], M], pin: bool | None = None) -> M:
        """The cached value for key, loading it with `loader` if needed.

        pin None leaves the pin state as it is (a new entry starts unpinned); True or False
        sets it. A failed load raises its error to every caller that waited on it; the next
        call tries again.
        """
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._touch(key, entry)
                    if pin is not None:
                        entry.pinned = pin
                    return entry.value
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Pending()
                    break
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            # loaded (or already evicted again): look once more under the lock

        try:
            value = loader()
        except BaseException as exc:
            pending.error = exc
            with self._lock:
                del self._pending[key]
            pending.done.set()
            raise
        evicted: list[tuple[str, M]] = []
        with self._lock:
            self._entries[key] = _Entry(value=value, pinned=bool(pin))
            del self._pending[key]
            evicted = self._evict_over_budget(protect=key)
        pending.done.set()
        self._notify_evicted(evicted)
        return value

    def get(self, key: str) -> M | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._touch(key, entry)
            return entry.value

    def mark_served(self, key: str, requests: int = 1) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.requests_served += requests
                entry.last_used = time.time()

    def pin(self, key: str) -> bool:
        return self._set_pinned(key, True)

    def unpin(self, key: str) -> bool:
        """Make key evictable again; evicts at once if the cache is over budget."""
        found = self._set_pinned(key, False)
        with self._lock:
            evicted = self._evict_over_budget(protect=None)
        self._notify_evicted(evicted)
        return found

    def is_pinned(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.pinned

    def unload(self, key: str) -> bool:
        """Drop key even when pinned; False when it was not loaded."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._notify_evicted([(key, entry.value)])
        return True

    def stats(self) -> list[EntryStats]:
        with self._lock:
            return [
                {
                    "key": key,
                    "pinned": entry.pinned,
                    "load_seconds": entry.value.load_seconds,
                    "memory_bytes": entry.value.memory_bytes,
                    "requests_served": entry.requests_served,
                    "loaded_at": entry.loaded_at,
                    "last_used": entry.last_used,
                }
                for key, entry in self._entries.items()
            ]

    def total_memory_bytes(self) -> int:
        with self._lock:
            return self._memory_bytes()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _set_pinned(self, key: str, pinned: bool) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            entry.pinned = pinned
            return True

    def _touch(self, key: str, entry: _Entry[M]) -> None:
        entry.last_used = time.time()
        self._entries.move_to_end(key)

    def _over_budget(self) -> bool:
        if len(self._entries) > self.max_models:
            return True
        budget = self.memory_budget_bytes
        return budget is not None and self._memory_bytes() > budget

    def _memory_bytes(self) -> int:
        return sum(e.value.memory_bytes for e in self._entries.values())

    def _evict_over_budget(self, protect: str | None) -> list[tuple[str, M]]:
        """Pop least recently used unpinned entries until within budget (caller holds the lock).

        The entry just loaded is protected: serving it over budget beats failing the request
        that asked for it. Pinned entries are never evicted here, so pins can overfill it.
        """
        evicted: list[tuple[str, M]] = []
        while self._over_budget():
            victim = next(
                (k for k, e in self._entries.items() if not e.pinned and k != protect), None
            )
            if victim is None:
                log.warning(
                    "model cache over budget (%d models, %d bytes) with nothing evictable",
                    len(self._entries),
                    self._memory_bytes(),
                )
                break
            evicted.append((victim, self._entries.pop(victim).value))
        return evicted

    def _notify_evicted(self, evicted: list[tuple[str, M]]) -> None:
        for key, value in evicted:
            log.info("unloaded model %s", key)
            if self._on_evict is not None:
                self._on_evict(key, value)
