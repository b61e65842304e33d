"""The servers freeze their start-up heap before serving (app/heap.py), and garbage made
afterwards is still collected. Each check runs in a child: freezing this test process's
heap would keep its objects from every later collection."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_child(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_what_requests_make_after_the_freeze_is_still_collected() -> None:
    out = run_child(
        """
        import gc, weakref
        from app.heap import freeze_startup_heap

        frozen = freeze_startup_heap()

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        alive = weakref.ref(a)
        del a, b
        gc.collect()
        print(frozen > 1000, alive() is None)
        """
    )
    assert out == "True True"


def test_the_inference_server_freezes_before_it_serves() -> None:
    out = run_child(
        """
        import gc
        import uvicorn

        seen = []
        uvicorn.run = lambda app, **kwargs: seen.append(gc.get_freeze_count())
        from worker.inference.server import run

        before = gc.get_freeze_count()
        run()
        print(before == 0, seen[0] > 10000)
        """
    )
    assert out == "True True"
