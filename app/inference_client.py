"""HTTP client of the inference server. A server that is down becomes a 503 with Retry-After."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from app.errors import APIError

RETRY_AFTER_SECONDS = 5


class InferenceClient:
    def __init__(self, base_url: str, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(path, json=payload)
        except httpx.TransportError as exc:
            raise APIError(
                503,
                f"The inference server at {self.base_url} is not reachable ({type(exc).__name__});"
                f" retry in {RETRY_AFTER_SECONDS} seconds.",
                code="inference_unavailable",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from exc
        body: dict[str, Any]
        try:
            body = response.json()
        except ValueError:
            body = {}
        err_503 = body.get("error") if isinstance(body, dict) else None
        if response.status_code == 503 and isinstance(err_503, dict):
            # out of memory on the accelerator: its message says what to send instead
            raise APIError(
                503,
                str(err_503.get("message")),
                code=err_503.get("code"),
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if response.status_code >= 500:
            raise APIError(
                503,
                f"The inference server failed ({response.status_code}); retry shortly.",
                code="inference_unavailable",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if response.status_code >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                raise APIError(
                    400 if response.status_code == 422 else response.status_code,
                    str(err.get("message", "rejected by the inference server")),
                    param=err.get("param"),
                    code=err.get("code"),
                )
            raise APIError(400, f"The inference server rejected the request: {body}")
        return body

    def load(self, spec: dict[str, Any], pin: bool = True) -> dict[str, Any]:
        return self._post("/internal/load", {"model": spec, "pin": pin})

    def unload(self, key: str) -> None:
        self._post("/internal/unload", {"key": key})

    def predict(
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
        return self._post("/internal/predict", payload)

    def healthy(self) -> bool:
        try:
            return self._client.get("/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def export_merged(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Ask the server (which has torch) to merge an adapter into its base and store it."""
        return self._post("/internal/export", {"model": spec, "format": "merged"})

    def stream_predict(
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
        request = self._client.build_request(
            "POST", "/internal/predict", json={**payload, "stream": True}
        )
        try:
            response = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            refusal = _refusal(response)
            if refusal.param != "stream":
                raise refusal
            # an inference server without streaming: one event with the whole text
            return PredictStream.of_prediction(self.predict(spec, [one_input], parameters))
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                body = json.loads(response.read())
            finally:
                response.close()
            return PredictStream.of_prediction(body)
        return PredictStream(response, self.base_url)


class PredictStream:
    """The events of one streamed generation, in order: `{"text": delta}` for each piece of
    new text, then `{"finish_reason", "prompt_tokens", "completion_tokens"}`.

    Iterating raises APIError if the server reports an error or the connection drops
    before the final event; the HTTP response is closed either way.
    """

    def __init__(self, response: httpx.Response | None, base_url: str) -> None:
        self._response = response
        self._base_url = base_url
        self._events: list[dict[str, Any]] = []

    @classmethod
    def of_prediction(cls, body: dict[str, Any]) -> PredictStream:
        stream = cls(None, "")
        (prediction,) = body["predictions"]
        final = {k: prediction[k] for k in ("finish_reason", "prompt_tokens", "completion_tokens")}
        stream._events = [{"text": prediction["text"]}, final]
        return stream

    def close(self) -> None:
        if self._response is not None:
            self._response.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._response is None:
            yield from self._events
            return
        try:
            for data in self._data():
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
                yield event
            raise APIError(
                503,
                "The inference server ended the stream before it finished; retry.",
                code="inference_unavailable",
            )
        except httpx.TransportError as exc:
            raise _unreachable(self._base_url, exc) from exc
        finally:
            self._response.close()

    def _data(self) -> Iterator[str]:
        """The data of each server-sent event (lines starting "data:", up to a blank line)."""
        assert self._response is not None
        lines: list[str] = []
        for line in self._response.iter_lines():
            if line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
            elif not line and lines:
                yield "\n".join(lines)
                lines = []
        if lines:
            yield "\n".join(lines)


# The same mapping as InferenceClient._post, for a response read from a stream.
def _unreachable(base_url: str, exc: Exception) -> APIError:
    return APIError(
        503,
        f"The inference server at {base_url} is not reachable ({type(exc).__name__});"
        f" retry in {RETRY_AFTER_SECONDS} seconds.",
        code="inference_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _refusal(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 500:
        return APIError(
            503,
            f"The inference server failed ({response.status_code}); retry shortly.",
            code="inference_unavailable",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return APIError(
            400 if response.status_code == 422 else response.status_code,
            str(err.get("message", "rejected by the inference server")),
            param=err.get("param"),
            code=err.get("code"),
        )
    return APIError(400, f"The inference server rejected the request: {body}")


def _stream_error_status(error: dict[str, Any]) -> int:
    """The status an error reported mid-stream would have had as a response."""
    if error.get("code") == "out_of_memory":
        return 503
    return 400 if error.get("type") == "invalid_request_error" else 500
