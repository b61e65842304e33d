"""HTTP client of the inference server. A server that is down becomes a 503 with Retry-After."""

from __future__ import annotations

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
        self, spec: dict[str, Any], inputs: list[Any], parameters: dict[str, Any]
    ) -> dict[str, Any]:
        return self._post(
            "/internal/predict", {"model": spec, "inputs": inputs, "parameters": parameters}
        )

    def healthy(self) -> bool:
        try:
            return self._client.get("/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def export_merged(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Ask the server (which has torch) to merge an adapter into its base and store it."""
        return self._post("/internal/export", {"model": spec, "format": "merged"})
