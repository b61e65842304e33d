"""ModelCache on plain objects: single-flight loads, LRU eviction, budgets, pins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from worker.inference.cache import ModelCache, Recipe


@dataclass
class Fake:
    name: str
    memory_bytes: int = 100
    load_seconds: float = 0.0
    base: Fake | None = None


def loader(name: str, size: int = 100) -> Callable[[], Recipe[Fake, Fake]]:
    return lambda: Recipe(lambda _: Fake(name, size))


def on_base(name: str, base: str, size: int = 10, base_size: int = 1000) -> Callable[[], Recipe]:
    """A model of `size` bytes on a shared base of `base_size` bytes."""
    return lambda: Recipe(
        lambda shared: Fake(name, size, base=shared), base, lambda: Fake(base, base_size)
    )


def test_second_get_reuses_the_loaded_value() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=2)
    first = cache.get_or_load("a", loader("a"))
    assert cache.get_or_load("a", loader("other")) is first


def test_evicts_least_recently_used_beyond_max_models() -> None:
    evicted: list[str] = []
    cache: ModelCache[Fake, Fake] = ModelCache(
        max_models=2, on_evict=lambda k, _: evicted.append(k)
    )
    cache.get_or_load("a", loader("a"))
    cache.get_or_load("b", loader("b"))
    cache.get("a")  # a is now more recent than b
    cache.get_or_load("c", loader("c"))
    assert [s["key"] for s in cache.stats()] == ["a", "c"]
    assert evicted == ["b"]


def test_memory_budget_evicts_but_keeps_the_newest_even_when_too_big() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=10, memory_budget_bytes=250)
    cache.get_or_load("a", loader("a", 100))
    cache.get_or_load("b", loader("b", 100))
    cache.get_or_load("c", loader("c", 100))
    assert "a" not in cache and len(cache) == 2
    cache.get_or_load("huge", loader("huge", 1000))
    assert [s["key"] for s in cache.stats()] == ["huge"]


def test_pinned_entries_survive_eviction_until_unpinned() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=1)
    cache.get_or_load("a", loader("a"), pin=True)
    cache.get_or_load("b", loader("b"))
    assert "a" in cache and "b" in cache  # over budget: the pin and the newest both stay
    cache.get_or_load("c", loader("c"))
    assert "b" not in cache and "a" in cache
    assert cache.unpin("a")
    assert "a" not in cache and "c" in cache


def test_pin_none_keeps_the_pin_and_unload_drops_pinned() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=2)
    cache.get_or_load("a", loader("a"), pin=True)
    cache.get_or_load("a", loader("a"))
    assert cache.stats()[0]["pinned"] is True
    assert cache.unload("a") is True
    assert cache.unload("a") is False


def test_concurrent_requests_load_once() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=2)
    calls = 0
    start = threading.Barrier(8)

    def slow_load(_: object) -> Fake:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        return Fake("a")

    results: list[Fake] = []

    def request() -> None:
        start.wait()
        results.append(cache.get_or_load("a", lambda: Recipe(slow_load)))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_a_failed_load_reaches_every_waiter_and_is_retried_later() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=2)
    gate = threading.Event()

    def failing(_: object) -> Fake:
        gate.wait(5)
        raise RuntimeError("disk on fire")

    errors: list[BaseException] = []

    def request() -> None:
        try:
            cache.get_or_load("a", lambda: Recipe(failing))
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
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=2)
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


def test_models_on_one_base_share_a_single_load() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=20)
    loads = 0

    def load_base() -> Fake:
        nonlocal loads
        loads += 1
        return Fake("base", 1000)

    models = [
        cache.get_or_load(
            f"a{i}",
            lambda i=i: Recipe(lambda b: Fake(f"a{i}", 10, base=b), "base", load_base),  # type: ignore[misc]
        )
        for i in range(10)
    ]
    assert loads == 1 and models[0].base is not None
    assert all(m.base is models[0].base for m in models)
    # the base counts once, each adapter its own bytes: not ten bases
    assert cache.total_memory_bytes() == 1000 + 10 * 10
    (base,) = cache.shared_stats()
    assert base["key"] == "base" and len(base["models"]) == 10


def test_the_base_goes_with_its_last_model() -> None:
    released: list[str] = []
    evicted: list[str] = []
    cache: ModelCache[Fake, Fake] = ModelCache(
        max_models=1,
        on_evict=lambda k, _: evicted.append(k),
        on_release_shared=lambda k, _: released.append(k),
    )
    cache.get_or_load("a", on_base("a", "base-1"))
    cache.get_or_load("b", on_base("b", "base-1"))
    assert evicted == ["a"] and released == []  # b still runs on base-1
    cache.get_or_load("c", on_base("c", "base-2"))
    assert evicted == ["a", "b"] and released == ["base-1"]
    assert cache.total_memory_bytes() == 1000 + 10
    assert cache.unload("c") and released == ["base-1", "base-2"]
    assert cache.total_memory_bytes() == 0


def test_memory_budget_counts_a_base_once_and_frees_it_with_its_models() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=10, memory_budget_bytes=1100)
    for name in ("a", "b", "c"):
        cache.get_or_load(name, on_base(name, "base-1", size=30))
    assert len(cache) == 3  # 1000 + 3 * 30 fits
    cache.get_or_load("x", on_base("x", "base-2", size=30))
    # base-2 does not fit beside base-1: every model of base-1 leaves, and base-1 with them
    assert [s["key"] for s in cache.stats()] == ["x"]
    assert [s["key"] for s in cache.shared_stats()] == ["base-2"]


def test_a_failed_model_load_releases_the_base_it_loaded() -> None:
    released: list[str] = []
    cache: ModelCache[Fake, Fake] = ModelCache(
        max_models=4, on_release_shared=lambda k, _: released.append(k)
    )

    def broken(_: object) -> Fake:
        raise ValueError("adapter does not fit")

    with pytest.raises(ValueError):
        cache.get_or_load("bad", lambda: Recipe(broken, "base", lambda: Fake("base", 1000)))
    assert released == ["base"] and cache.total_memory_bytes() == 0


def test_a_model_in_use_is_not_evicted_under_its_request() -> None:
    cache: ModelCache[Fake, Fake] = ModelCache(max_models=1)
    with cache.use("a", loader("a")) as value:
        cache.get_or_load("b", loader("b"))
        assert value.name == "a" and "a" in cache and "b" in cache
    # released: now the budget applies again and the least recently used one goes
    assert "a" not in cache and "b" in cache
