"""Async HTTP client of the inference server (docs/internals.md).

One pool of keep-alive connections (TUNERY_INFERENCE_MAX_CONNECTIONS) serves every request
of the API process, and a stream relays the server's events on the event loop, without a
thread each. aiohttp rather than httpx: with 32 requests in flight httpx's pool costs
~2.4 ms of CPU per request, aiohttp ~0.2 ms, and this hop is on every predict (measured with
a trivial server on this project's 2-CPU box; docs/serving.md). Answers become APIErrors the
routes can return as they are: a server that is down or failing is a 503 with Retry-After,
its overload answer a 503 with its own Retry-After, its 4xx a 4xx that names the param.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from app.failures import APIError

RETRY_AFTER_SECONDS = 5
# what an overloaded server asks for when it does not say (it should: Retry-After)
OVERLOADED_RETRY_SECONDS = 1
OVERLOADED = "overloaded"
UNAVAILABLE = "inference_unavailable"
# waiting for a pooled connection and connecting: a server that is down or saturated is
# told to the client in seconds, not after the read timeout
CONNECT_SECONDS = 5.0


class InferenceClient:
    def __init__(self, base_url: str, max_connections: int = 256, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_SECONDS, sock_connect=CONNECT_SECONDS, sock_read=timeout
        )
        # a session's connections belong to the event loop that opened them; an API
        # process runs one loop, but tests serve one app from two
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                self.base_url,
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=self._timeout,
                # a response is JSON or server-sent events; no cookies, no auto-decompression
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
            self._sessions[loop] = session
        return session

    async def aclose(self) -> None:
        """Close this loop's connections (sessions of other loops go with their loop)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._session().post(path, json=payload) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise refusal(response.status, response.headers, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        body: dict[str, Any] = json.loads(raw)
        return body

    async def load(self, spec: dict[str, Any], pin: bool = True) -> dict[str, Any]:
        return await self._post("/internal/load", {"model": spec, "pin": pin})

    async def unload(self, key: str) -> None:
        await self._post("/internal/unload", {"key": key})

    async def predict(
        self,
        spec: dict[str, Any],
        inputs: list[Any],
        parameters: dict[str, Any],
        pin: bool | None = None,
    ) -> dict[str, Any]:
        """pin True: the model stays pinned even if the server restarted and reloads it."""
        payload: dict[str, Any] = {"model": spec, "inputs": inputs, "parameters": parameters}
        if pin is not None:
            payload["pin"] = pin
        return await self._post("/internal/predict", payload)

    async def healthy(self) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=2.0)
            async with self._session().get("/healthz", timeout=timeout) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def export_merged(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Ask the server (which has torch) to merge an adapter into its base and store it."""
        return await self._post("/internal/export", {"model": spec, "format": "merged"})

    async def stream_predict(
        self,
        spec: dict[str, Any],
        one_input: Any,
        parameters: dict[str, Any],
        pin: bool | None = None,
    ) -> PredictStream:
        """Start generating for one input, streamed (docs/internals.md, "stream": true).

        Returns once the server has accepted the request, so a refusal is still an APIError
        the caller can answer with a status code; the events come from iterating the result.
        """
        payload: dict[str, Any] = {"model": spec, "inputs": [one_input], "parameters": parameters}
        if pin is not None:
            payload["pin"] = pin
        try:
            response = await self._session().post(
                "/internal/predict", json={**payload, "stream": True}
            )
            if response.status >= 400 or not response.content_type.startswith("text/event-stream"):
                async with response:
                    raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        if response.status >= 400:
            error = refusal(response.status, response.headers, raw)
            if error.param != "stream":
                raise error
            # an inference server without streaming: one event with the whole text
            return PredictStream.of_prediction(
                await self.predict(spec, [one_input], parameters, pin)
            )
        if not response.content_type.startswith("text/event-stream"):
            return PredictStream.of_prediction(json.loads(raw))
        return PredictStream(response, self)

    def _unreachable(self, exc: BaseException) -> APIError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return APIError(
                503,
                f"The inference server at {self.base_url} took no request within "
                f"{CONNECT_SECONDS:g} s (down, or all {self.max_connections} connections from "
                "this API process are busy: TUNERY_INFERENCE_MAX_CONNECTIONS); retry in "
                f"{RETRY_AFTER_SECONDS} seconds.",
                code=UNAVAILABLE,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return APIError(
            503,
            f"The inference server at {self.base_url} is not reachable ({type(exc).__name__});"
            f" retry in {RETRY_AFTER_SECONDS} seconds.",
            code=UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


class PredictStream:
    """The events of one streamed generation, in order: `{"text": delta}` for each piece of
    new text (with `index` when n > 1, `logprobs` when asked for), then
    `{"finish_reason", "prompt_tokens", "completion_tokens"}` (with `tool_calls` when the
    reply called tools, and each choice's own in `choices` when n > 1).

    Iterating raises APIError if the server reports an error or the connection drops
    before the final event; the HTTP response is closed either way.
    """

    def __init__(
        self, response: aiohttp.ClientResponse | None, client: InferenceClient | None
    ) -> None:
        self._response = response
        self._client = client
        self._events: list[dict[str, Any]] = []
        self._on_finish: list[Callable[[dict[str, Any]], None]] = []

    def on_finish(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """`callback(final event)` runs when the final event goes by (usage counting)."""
        self._on_finish.append(callback)

    def _finished(self, event: dict[str, Any]) -> None:
        if "finish_reason" in event:
            for callback in self._on_finish:
                callback(event)

    @classmethod
    def of_prediction(cls, body: dict[str, Any]) -> PredictStream:
        """The events a stream of these predictions (one input's n choices) would send."""
        stream = cls(None, None)
        predictions = body["predictions"]
        many = len(predictions) > 1
        for index, prediction in enumerate(predictions):
            event = {"text": prediction["text"]}
            if many:
                event["index"] = index
            if "logprobs" in prediction:
                event["logprobs"] = prediction["logprobs"]
            stream._events.append(event)
        choices = [
            {k: v for k, v in p.items() if k not in ("text", "logprobs", "prompt_tokens")}
            for p in predictions
        ]
        final = {
            **choices[0],
            "prompt_tokens": predictions[0]["prompt_tokens"],
            "completion_tokens": sum(p["completion_tokens"] for p in predictions),
        }
        if many:
            final["choices"] = [{"index": i, **c} for i, c in enumerate(choices)]
        stream._events.append(final)
        return stream

    async def aclose(self) -> None:
        response = self._response
        if response is None or response.closed:
            return
        if response.content.at_eof():
            response.release()  # read to the end: the connection serves the next request
        else:
            # stopped early: dropping the connection tells the server to stop generating
            response.close()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        if self._response is None:
            for event in self._events:
                self._finished(event)
                yield event
            return
        try:
            async for data in self._data():
                if data == "[DONE]":
                    return
                event = json.loads(data)
                error = event.get("error") if isinstance(event, dict) else None
                if isinstance(error, dict):
                    raise APIError(
                        _stream_error_status(error),
                        str(error.get("message", "the inference server failed while streaming")),
                        param=error.get("param"),
                        code=error.get("code"),
                    )
                self._finished(event)
                yield event
            raise APIError(
                503,
                "The inference server ended the stream before it finished; retry.",
                code=UNAVAILABLE,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            assert self._client is not None
            raise self._client._unreachable(exc) from exc
        finally:
            await self.aclose()

    async def _data(self) -> AsyncIterator[str]:
        """The data of each server-sent event (lines starting "data:", up to a blank line)."""
        assert self._response is not None
        lines: list[str] = []
        async for raw in self._response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
            elif not line and lines:
                yield "\n".join(lines)
                lines = []
        if lines:
            yield "\n".join(lines)


def refusal(status: int, headers: Mapping[str, str], raw: bytes) -> APIError:
    """The APIError for an error answer of the inference server."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and (status == 429 or err.get("code") == OVERLOADED):
        # its queue is full: the client should come back soon, not give up
        retry = headers.get("Retry-After", "")
        return APIError(
            503 if status >= 500 else 429,
            str(err.get("message") or "The inference server is overloaded; retry shortly."),
            code=err.get("code") or OVERLOADED,
            headers={"Retry-After": retry if retry.isdigit() else str(OVERLOADED_RETRY_SECONDS)},
        )
    if status == 503 and isinstance(err, dict):
        # out of memory on the accelerator: its message says what to send instead
        return APIError(
            503,
            str(err.get("message")),
            code=err.get("code"),
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if status >= 500:
        return APIError(
            503,
            f"The inference server failed ({status}); retry shortly.",
            code=UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(err, dict):
        return APIError(
            400 if status == 422 else status,
            str(err.get("message", "rejected by the inference server")),
            param=err.get("param"),
            code=err.get("code"),
        )
    return APIError(400, f"The inference server rejected the request: {body}")


def _stream_error_status(error: dict[str, Any]) -> int:
    """The status an error reported mid-stream would have had as a response."""
    if error.get("code") in ("out_of_memory", OVERLOADED):
        return 503
    return 400 if error.get("type") == "invalid_request_error" else 500
