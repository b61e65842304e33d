"""A small HTTP client of the Tunery API: the CLI's only way to the server.

Every non-2xx answer becomes a ClientError carrying the API's own message (which says what to
change), its `param` and `code`; a server that cannot be reached says how to start one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        status = f"{self.status} " if self.status else ""
        return f"{status}{self.message}{where}"


def _error_of(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return ClientError(
            str(err["message"]),
            status=response.status_code,
            param=err.get("param"),
            code=err.get("code"),
        )
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return ClientError(body["detail"], status=response.status_code)
    text = response.text.strip()[:300] or response.reason_phrase
    return ClientError(f"{response.request.url.path}: {text}", status=response.status_code)


class ProgressReader:
    """A file wrapper that reports how many bytes httpx has read from it so far."""

    def __init__(self, fh: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._fh = fh
        self._on_read = on_read

    def fileno(self) -> int:  # httpx sizes the upload (Content-Length) with fstat
        return self._fh.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self._on_read(len(chunk))
        return chunk


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`http`: an httpx client to send through instead (tests pass FastAPI's TestClient)."""
        self.base_url = (base_url or os.environ.get("TUNERY_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        key = api_key if api_key is not None else os.environ.get("TUNERY_API_KEY")
        headers = {"User-Agent": "tunery-cli"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # per-request timeouts for slow calls (uploads, predict), where the client is ours
        self._own_client = http is None
        if http is not None:
            self.base_url = str(http.base_url).rstrip("/")
            http.headers.update(headers)
            self._http = http
        else:
            self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.TransportError) -> ClientError:
        return ClientError(
            f"Could not reach Tunery at {self.base_url} ({type(exc).__name__}: {exc}). Start it "
            "with `tunery serve`, or point TUNERY_BASE_URL (or --base-url) at a running API."
        )

    def request(
        self, method: str, path: str, *, slow: httpx.Timeout | None = None, **kwargs: Any
    ) -> Any:
        """`slow`: the timeout for a call that may take minutes (loading a model, uploading)."""
        if slow is not None and self._own_client:
            kwargs["timeout"] = slow
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ClientError(
                f"{method} {path} got no answer from {self.base_url} in time ({exc}); "
                "the server may be busy: try again."
            ) from exc
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _error_of(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(
                f"{method} {path} answered {response.status_code} with something other than "
                f"JSON; is {self.base_url} a Tunery API?"
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def list_all(self, path: str, limit: int = 100, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged list (or of a list that does not page)."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = self.get(path, limit=limit, after=after, **params)
            data = list(page.get("data", []))
            items.extend(data)
            if not page.get("has_more") or not data:
                return items
            after = str(data[-1]["id"])

    def upload(
        self, path: Path, purpose: str, on_progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        with path.open("rb") as fh:
            body: IO[bytes] | ProgressReader = (
                ProgressReader(fh, on_progress) if on_progress else fh
            )
            result: dict[str, Any] = self.request(
                "POST",
                "/v1/files",
                files={"file": (path.name, body)},
                data={"purpose": purpose},
                slow=httpx.Timeout(60.0, write=600.0, read=600.0),
            )
        return result

    @contextmanager
    def stream(self, path: str, **params: Any) -> Iterator[httpx.Response]:
        """A streamed GET (downloads); errors raise before the body is read."""
        try:
            timeout: httpx.Timeout | httpx._client.UseClientDefault = (
                httpx.Timeout(60.0, read=1800.0) if self._own_client else httpx.USE_CLIENT_DEFAULT
            )
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
