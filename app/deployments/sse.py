"""Server-sent events relayed from the inference server, on the event loop.

A stream holds things until it ends: the upstream response (closing it tells the inference
server to stop generating for nobody), a concurrency slot, a usage count. Starlette runs a
StreamingResponse's iterator only once the headers go out, and leaves it suspended when the
client disconnects, so the cleanup hangs on the response itself: it runs however the
response ends, including a client gone before the first byte.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(StreamingResponse):
    def __init__(
        self, lines: AsyncGenerator[str, None], on_close: Callable[[], None] | None = None
    ) -> None:
        super().__init__(lines, media_type="text/event-stream", headers=SSE_HEADERS)
        self._lines = lines
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._lines.aclose()
            if self._on_close is not None:
                self._on_close()
