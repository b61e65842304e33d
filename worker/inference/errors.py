"""What the inference server refuses, as exceptions that carry what the caller should do.

Torch-free, so the cache, the engines and the HTTP layer can share them without importing
the model code.
"""

from __future__ import annotations

# how long a refused client should wait; a decode step or a batch takes milliseconds, so
# one second is long enough for the queue to move and short enough not to idle
OVERLOADED_RETRY_AFTER_SECONDS = 1


class ModelLoadError(Exception):
    """A model that cannot be served; the message says why and is shown to the caller."""


class Overloaded(Exception):
    """The base model's queue is full: the request is refused at once instead of waiting.

    The server answers 503 with `Retry-After` and code `overloaded`; nothing was started.
    """

    def __init__(self, message: str, retry_after: int = OVERLOADED_RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def short_error(exc: BaseException, limit: int = 1000) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
