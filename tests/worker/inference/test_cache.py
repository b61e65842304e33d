"""ModelCache on plain objects: single-flight loads, LRU eviction, budgets, pins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from worker.inference.cache import ModelCache


@dataclass
class Fake:
    name: str
    memory_bytes: int = 100
    load_seconds: float = 0.0


def loader(name: str, size: int = 100) -> Callable[[], Fake]:
    return lambda: Fake(name, size)


def test_second_get_reuses_the_loaded_value() -> None:
    cache: ModelCache[Fake] = ModelCache(max_models=2)
    first = cache.get_or_load("a", loader("a"))
    assert cache.get_or_load("a", loader("other")) is first


def test_evicts_least_recently_used_beyond_max_models() -> None:
    evicted: list[str] = []
    cache: ModelCache[Fake] = ModelCache(max_models=2, on_evict=lambda k, _: evicted.append(k))
    cache.get_or_load("a", loader("a"))
    cache.get_or_load("b", loader("b"))
    cache.get("a")  # a is now more recent than b
    cache.get_or_load("c", loader("c"))
    assert [s["key"] for s in cache.stats()] == ["a", "c"]
    assert evicted == ["b"]


def test_memory_budget_evicts_but_keeps_the_newest_even_when_too_big() -> None:
    cache: ModelCache[Fake] = ModelCache(max_models=10, memory_budget_bytes=250)
    cache.get_or_load("a", loader("a", 100))
    cache.get_or_load("b", loader("b", 100))
    cache.get_or_load("c", loader("c", 100))
    assert "a" not in cache and len(cache) == 2
    cache.get_or_load("huge", loader("huge", 1000))
    assert [s["key"] for s in cache.stats()] == ["huge"]


def test_pinned_entries_survive_eviction_until_unpinned() -> None:
    cache: ModelCache[Fake] = ModelCache(max_models=1)
    cache.get_or_load("a", loader("a"), pin=True)
    cache.get_or_load("b", loader("b"))
    assert "a" in cache and "b" in cache  # over budget: the pin and the newest both stay
    cache.get_or_load("c", loader("c"))
    assert "b" not in cache and "a" in cache
    assert cache.unpin("a")
    assert "a" not in cache and "c" in cache


def test_pin_none_keeps_the_pin_and_unload_drops_pinned() -> None:
    cache: ModelCache[Fake] = ModelCache(max_models=2)
    cache.get_or_load("a", loader("a"), pin=True)
    cache.get_or_load("a", loader("a"))
    assert cache.stats()[0]["pinned"] is True
    assert cache.unload("a") is True
    assert cache.unload("a") is False


def test_concurrent_requests_load_once() -> None:
    cache: ModelCache[Fake] = ModelCache(max_models=2)
    calls = 0
    start = threading.Barrier(8)

    def slow_load() -> Fake:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        return Fake("a")

    results: list[Fake] = []

    def request() -> None:
        start.wait()
        results.append(cache.get_or_load("a", slow_load))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_a_failed_load_reaches_every_waiter_and_is_retried_later() -> None:
    cache: ModelCache[Fake] = ModelCache(max_models=2)
    gate = threading.Event()

    def failing() -> Fake:
        gate.wait(5)
        raise RuntimeError("disk on fire")

    errors: list[BaseException] = []

    def request() -> None:
        try:
            cache.get_or_load("a", failing)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join()
    assert len(errors) == 3 and all(str(e) == "disk on fire" for e in errors)
    assert "a" not in cache
    assert cache.get_or_load("a", loader("a")).name == "a"


def test_stats_count_requests_served() -> None:
    cache: ModelCache[Fake] = ModelCache(max_models=2)
    cache.get_or_load("a", loader("a", 123))
    cache.mark_served("a")
    cache.mark_served("a", requests=2)
    (entry,) = cache.stats()
    assert entry["requests_served"] == 3
    assert entry["memory_bytes"] == 123
    assert entry["last_used"] >= entry["loaded_at"]


def test_max_models_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ModelCache(max_models=0)
