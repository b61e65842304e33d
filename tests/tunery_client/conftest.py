"""The client's tests drive the real API in-process: its fixture, reused."""

from tests.app.conftest import api

__all__ = ["api"]
