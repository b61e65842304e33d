"""An in-process cache of loaded models: one load per key, shared bases, LRU eviction, pins.

Loading takes seconds to minutes and memory is the scarce resource, so the cache makes sure
concurrent requests for a model that is not loaded yet wait for a single load, and evicts
the least recently used unpinned models once it holds more than `max_models` or more than
`memory_budget_bytes`. It knows nothing of torch: values only report their size.

Two levels: a *model* (what a key names: an adapter, a full model, a bare base) may run on
a *shared* value (one copy of a base's weights) that several models use. A shared value is
loaded once, by the first model that needs it, counted once in the memory total, and
released together with the last model using it. Models in use by a request (`use`) are
never evicted under it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypedDict, TypeVar

log = logging.getLogger(__name__)


class Sized(Protocol):
    @property
    def memory_bytes(self) -> int: ...

    @property
    def load_seconds(self) -> float: ...


M = TypeVar("M", bound=Sized)
S = TypeVar("S", bound=Sized)


class EntryStats(TypedDict):
    key: str
    pinned: bool
    load_seconds: float
    memory_bytes: int
    requests_served: int
    loaded_at: float
    last_used: float
    shared: str | None
    in_use: int


class SharedStats(TypedDict):
    key: str
    memory_bytes: int
    load_seconds: float
    models: list[str]


@dataclass
class _Entry(Generic[M]):
    value: M
    pinned: bool
    shared_key: str | None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    requests_served: int = 0
    in_use: int = 0


@dataclass
class _Shared(Generic[S]):
    value: S
    # models holding it, loads of a model on it in progress included
    users: int = 0


@dataclass
class Recipe(Generic[M, S]):
    """How to load a model: `load` gets the shared value named by shared_key (loaded with
    load_shared when nobody holds it yet), or None when the model shares nothing."""

    load: Callable[[S | None], M]
    shared_key: str | None = None
    load_shared: Callable[[], S] | None = None


class _Pending:
    """A load in progress that other callers wait on instead of loading again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class ModelCache(Generic[M, S]):
    def __init__(
        self,
        max_models: int,
        memory_budget_bytes: int | None = None,
        on_evict: Callable[[str, M], None] | None = None,
        on_release_shared: Callable[[str, S], None] | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self._on_evict = on_evict
        self._on_release_shared = on_release_shared
        self._lock = threading.Lock()
        # ordered from least to most recently used
        self._entries: OrderedDict[str, _Entry[M]] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._shared: dict[str, _Shared[S]] = {}
        self._pending_shared: dict[str, _Pending] = {}

    # -- getting models ------------------------------------------------------------------

    def get_or_load(
        self, key: str, prepare: Callable[[], Recipe[M, S]], pin: bool | None = None
    ) -> M:
        """The cached value for key, loading it as `prepare()` says if needed.

        `prepare` runs on a miss only. Its recipe's shared value is loaded first (once,
        whoever asks) and handed to its loader. pin None leaves the pin state as it is (a
        new entry starts unpinned); True or False sets it. A failed load raises its error to
        every caller that waited on it; the next call tries again.
        """
        return self._get(key, prepare, pin, hold=False)

    @contextmanager
    def use(
        self, key: str, prepare: Callable[[], Recipe[M, S]], pin: bool | None = None
    ) -> Iterator[M]:
        """get_or_load, with the model kept from eviction until the block ends."""
        value = self._get(key, prepare, pin, hold=True)
        try:
            yield value
        finally:
            self._release(key, value)

    def _get(
        self, key: str, prepare: Callable[[], Recipe[M, S]], pin: bool | None, hold: bool
    ) -> M:
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._touch(key, entry)
                    if pin is not None:
                        entry.pinned = pin
                    if hold:
                        entry.in_use += 1
                    return entry.value
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Pending()
                    break
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            # loaded (or already evicted again): look once more under the lock

        shared_key: str | None = None
        try:
            recipe = prepare()
            shared_key = recipe.shared_key
            base = None
            if recipe.shared_key is not None and recipe.load_shared is not None:
                base = self._acquire_shared(recipe.shared_key, recipe.load_shared)
            try:
                value = recipe.load(base)
            except BaseException:
                if base is not None and shared_key is not None:
                    with self._lock:
                        released = self._drop_user(shared_key)
                    self._notify([], released)
                raise
        except BaseException as exc:
            pending.error = exc
            with self._lock:
                del self._pending[key]
            pending.done.set()
            raise
        with self._lock:
            self._entries[key] = _Entry(
                value=value, pinned=bool(pin), shared_key=shared_key, in_use=int(hold)
            )
            del self._pending[key]
            evicted, released = self._evict_over_budget(protect=key)
        pending.done.set()
        self._notify(evicted, released)
        return value

    def _acquire_shared(self, key: str, loader: Callable[[], S]) -> S:
        while True:
            with self._lock:
                held = self._shared.get(key)
                if held is not None:
                    held.users += 1
                    return held.value
                pending = self._pending_shared.get(key)
                if pending is None:
                    pending = self._pending_shared[key] = _Pending()
                    break
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
        try:
            value = loader()
        except BaseException as exc:
            pending.error = exc
            with self._lock:
                del self._pending_shared[key]
            pending.done.set()
            raise
        with self._lock:
            self._shared[key] = _Shared(value=value, users=1)
            del self._pending_shared[key]
        pending.done.set()
        return value

    def acquire(self, key: str, prepare: Callable[[], Recipe[M, S]], pin: bool | None = None) -> M:
        """get_or_load, with the model kept from eviction until release()."""
        return self._get(key, prepare, pin, hold=True)

    def hold(self, key: str, pin: bool | None = None) -> M | None:
        """The value for key, kept from eviction until release(), if it is loaded; never
        loads (for callers that must not block, an event loop)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._touch(key, entry)
            if pin is not None:
                entry.pinned = pin
            entry.in_use += 1
            return entry.value

    def release(self, key: str, value: M) -> None:
        self._release(key, value)

    def _release(self, key: str, value: M) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.value is value and entry.in_use > 0:
                entry.in_use -= 1
            # eviction skipped models in use; now that one is free, catch up
            evicted, released = self._evict_over_budget(protect=None)
        self._notify(evicted, released)

    def get(self, key: str) -> M | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._touch(key, entry)
            return entry.value

    def get_quietly(self, key: str) -> M | None:
        """The value for key without counting it as used (for reports)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.value if entry is not None else None

    def mark_served(self, key: str, requests: int = 1) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.requests_served += requests
                entry.last_used = time.time()

    # -- pins and unloading ---------------------------------------------------------------

    def pin(self, key: str) -> bool:
        return self._set_pinned(key, True)

    def unpin(self, key: str) -> bool:
        """Make key evictable again; evicts at once if the cache is over budget."""
        found = self._set_pinned(key, False)
        with self._lock:
            evicted, released = self._evict_over_budget(protect=None)
        self._notify(evicted, released)
        return found

    def is_pinned(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.pinned

    def unload(self, key: str) -> bool:
        """Drop key even when pinned or in use; False when it was not loaded."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            released = self._drop_user(entry.shared_key) if entry.shared_key else []
        self._notify([(key, entry.value)], released)
        return True

    # -- reporting -------------------------------------------------------------------------

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
                    "shared": entry.shared_key,
                    "in_use": entry.in_use,
                }
                for key, entry in self._entries.items()
            ]

    def shared_stats(self) -> list[SharedStats]:
        with self._lock:
            return [
                {
                    "key": key,
                    "memory_bytes": held.value.memory_bytes,
                    "load_seconds": held.value.load_seconds,
                    "models": [k for k, e in self._entries.items() if e.shared_key == key],
                }
                for key, held in self._shared.items()
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

    # -- internals (callers hold the lock unless said otherwise) ---------------------------

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
        own = sum(e.value.memory_bytes for e in self._entries.values())
        return own + sum(s.value.memory_bytes for s in self._shared.values())

    def _drop_user(self, shared_key: str) -> list[tuple[str, S]]:
        """One model fewer on shared_key; returns it when nobody uses it any more."""
        held = self._shared.get(shared_key)
        if held is None:
            return []
        held.users -= 1
        if held.users > 0:
            return []
        del self._shared[shared_key]
        return [(shared_key, held.value)]

    def _evict_over_budget(
        self, protect: str | None
    ) -> tuple[list[tuple[str, M]], list[tuple[str, S]]]:
        """Pop least recently used unpinned models until within budget.

        The model just loaded is protected: serving it over budget beats failing the request
        that asked for it. Pinned models and models in use are never evicted here, so they
        can overfill it.
        """
        evicted: list[tuple[str, M]] = []
        released: list[tuple[str, S]] = []
        while self._over_budget():
            victim = next(
                (
                    k
                    for k, e in self._entries.items()
                    if not e.pinned and e.in_use == 0 and k != protect
                ),
                None,
            )
            if victim is None:
                log.warning(
                    "model cache over budget (%d models, %d bytes) with nothing evictable",
                    len(self._entries),
                    self._memory_bytes(),
                )
                break
            entry = self._entries.pop(victim)
            evicted.append((victim, entry.value))
            if entry.shared_key is not None:
                released += self._drop_user(entry.shared_key)
        return evicted, released

    def _notify(self, evicted: list[tuple[str, M]], released: list[tuple[str, S]]) -> None:
        """Tell the owner what left (outside the lock: freeing weights takes time)."""
        for key, value in evicted:
            log.info("unloaded model %s", key)
            if self._on_evict is not None:
                self._on_evict(key, value)
        for key, shared in released:
            log.info("released shared weights %s", key)
            if self._on_release_shared is not None:
                self._on_release_shared(key, shared)
