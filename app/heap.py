"""Keep the garbage collector's full passes off the request path of a server process.

Once torch, transformers, FastAPI and SQLAlchemy are imported, a server holds about half a
million long-lived objects. CPython's full (generation 2) collection walks every one of them,
with the GIL held: 1.1-1.3 s each on the 2-CPU development box under load, and every request
in flight waits for it. That is a tail-latency spike, not a throughput cost, and the p99 of
a loaded deployment is made of them. `gc.freeze()` moves the objects that exist once the
process has started into a permanent generation that collections skip; what requests
create (and the models loaded later, which an eviction must free) is collected as before.

Called by the server entry points just before they serve, never by the app factories, so
that a test process that builds apps keeps its collector as it was.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze what survives; the frozen count."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
