"""The dashboard: one static page at `/` (HTML, CSS and vanilla JS, no build step) that reads
the same /v1 API as every other client. It polls while a job runs, draws its curves as inline
SVG (static/chart.js) and sends the API key, when one is needed, from the browser's storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC = Path(__file__).parent / "static"


class _Revalidated(StaticFiles):
    """Static files that the browser revalidates (ETag) on every load, so an upgraded server
    never runs yesterday's script."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install_dashboard(app: FastAPI) -> None:
    app.mount("/dashboard/static", _Revalidated(directory=STATIC), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        # no-cache: the page is tiny and must never run an old script against a new API
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_alias() -> RedirectResponse:
        return RedirectResponse("/")
