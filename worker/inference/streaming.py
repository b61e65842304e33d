"""The text of a sequence while it is generated: stop strings and streamed deltas.

A delta is sent only once it is certain to be part of the final text: text that could be
the start of a stop string is held back until the next tokens decide, and so is a half
decoded character. The deltas of a stream therefore add up to exactly the `text` the same
request gets without streaming.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from worker.inference.predictors import cut_at_stop, produced_tokens

REPLACEMENT = "\ufffd"  # what decoding shows for the first bytes of a multi-byte character


def safe_prefix(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The part of text that no later token can change, and whether a stop string ended it."""
    cut = cut_at_stop(text, stops)
    if cut >= 0:
        return text[:cut], True
    hold = 0
    for stop in stops:
        # the longest end of text that starts this stop string
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    safe = text[: len(text) - hold]
    return safe.rstrip(REPLACEMENT), False


class TextWatch:
    """Decodes a sequence's tokens as they come: tells when a stop string appeared and, for
    a stream, emits the text that became certain."""

    def __init__(
        self,
        tokenizer: Any,
        eos: Sequence[int],
        stops: Sequence[str],
        emit: Callable[[str], None] | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos = list(eos)
        self.stops = list(stops)
        self.emit = emit
        self.sent = ""

    def update(self, tokens: Sequence[int]) -> bool:
        """Look at all tokens generated so far; True when a stop string ended the text."""
        produced, _ = produced_tokens(tokens, self.eos, self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(produced, skip_special_tokens=True)
        safe, stopped = safe_prefix(text, self.stops)
        self._send(safe)
        return stopped

    def finish(self, final_text: str) -> None:
        """Send what the final text holds beyond the deltas already sent."""
        self._send(final_text)

    def _send(self, text: str) -> None:
        if self.emit is None:
            return
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta = text[len(self.sent) :]
            self.sent = text
            self.emit(delta)
