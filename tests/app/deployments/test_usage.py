"""Usage counts: flushed without losing or doubling a request, read exactly while a flush
runs, and added up across API processes on the real database."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.orm import sessionmaker

from app.db import make_engine
from app.deployments import repository
from app.deployments import usage as usage_module
from app.deployments.usage import Usage, UsageCounter
from app.tables import DeploymentRow


class SlowStore:
    """A 'database' whose write takes as long as the test wants."""

    def __init__(self) -> None:
        self.requests = 0
        self.writing = threading.Event()
        self.proceed = threading.Event()
        self.fail = False

    def write(self, deltas: dict[str, Usage]) -> None:
        self.writing.set()
        self.proceed.wait(10)
        if self.fail:
            raise RuntimeError("database is locked")
        self.requests += deltas["dep"].requests

    async def read(self) -> int:
        await asyncio.sleep(0)
        return self.requests


def total(result: tuple[int, dict[str, Usage]]) -> int:
    stored, pending = result
    return stored + pending.get("dep", Usage()).requests


def test_a_read_during_a_flush_counts_each_request_once() -> None:
    async def scenario() -> None:
        store = SlowStore()
        usage = UsageCounter(store.write)
        for _ in range(5):
            usage.record("dep", Usage(requests=1))
        flush = asyncio.ensure_future(usage.flush())
        await asyncio.to_thread(store.writing.wait, 10)
        usage.record("dep", Usage(requests=1))  # counted while the flush writes
        read = asyncio.ensure_future(usage.exact(store.read))
        await asyncio.sleep(0.05)
        assert not read.done()  # it waits for the write's outcome rather than guess it
        store.proceed.set()
        await flush
        assert total(await read) == 6
        assert store.requests == 5
        await usage.flush()
        assert store.requests == 6 and total(await usage.exact(store.read)) == 6

    asyncio.run(scenario())


def test_a_read_does_not_wait_long_for_a_stuck_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_module, "MAX_FLUSH_WAIT_SECONDS", 0.1)

    async def scenario() -> None:
        store = SlowStore()
        usage = UsageCounter(store.write)
        usage.record("dep", Usage(requests=4))
        flush = asyncio.ensure_future(usage.flush())
        await asyncio.to_thread(store.writing.wait, 10)
        usage.record("dep", Usage(requests=1))
        # the stuck flush's 4 are left out until they land; nothing is counted twice
        assert total(await asyncio.wait_for(usage.exact(store.read), 5)) == 1
        store.proceed.set()
        await flush
        assert total(await usage.exact(store.read)) == 5

    asyncio.run(scenario())


def test_a_failed_flush_keeps_the_counts_for_the_next() -> None:
    async def scenario() -> None:
        store = SlowStore()
        store.proceed.set()
        store.fail = True
        usage = UsageCounter(store.write)
        usage.record("dep", Usage(requests=3, prompt_tokens=7))
        await usage.flush()
        assert store.requests == 0 and total(await usage.exact(store.read)) == 3
        store.fail = False
        await usage.flush()
        assert store.requests == 3 and total(await usage.exact(store.read)) == 3

    asyncio.run(scenario())


def test_two_api_processes_flushing_at_once_add_up(migrated_database_url: str) -> None:
    engine = make_engine(migrated_database_url)
    make_session = sessionmaker(bind=engine, expire_on_commit=False)
    with make_session() as session:
        dep_id = repository.add(session, "tiny-bert", "proj-1").id
        session.commit()

    def write(deltas: dict[str, Usage]) -> None:
        with make_session() as session:
            repository.add_usage(session, deltas)
            session.commit()

    def one_process(requests: int) -> None:
        async def serve() -> None:
            usage = UsageCounter(write)
            for i in range(requests):
                usage.record(dep_id, Usage(requests=1, prompt_tokens=2, completion_tokens=i % 2))
                if i % 10 == 0:
                    await usage.flush()
            await usage.flush()

        asyncio.run(serve())

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one_process, [101, 57]))
    with make_session() as session:
        row = session.get(DeploymentRow, dep_id)
        assert row is not None
        assert (row.requests_served, row.prompt_tokens, row.completion_tokens) == (
            158,
            316,
            50 + 28,
        )
    engine.dispose()
