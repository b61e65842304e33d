"""The text of a sequence while it is generated: stop strings and streamed deltas.

A delta is sent only once it is certain to be part of the final text: text that could be
the start of a stop string is held back until the next tokens decide, and so is a half
decoded character. The deltas of a stream therefore add up to exactly the `text` the same
request gets without streaming.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from worker.inference.logprobs import TokenLogprob, public
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
    a stream, emits the text that became certain as `{"text": delta}` events, with the
    sequence's `index` when a request has several and the `logprobs` of the tokens the
    delta covers when they are asked for. `streamable(text)` (a chat with tools) says how
    much of the text may go out as content: never a tool call being written."""

    def __init__(
        self,
        tokenizer: Any,
        eos: Sequence[int],
        stops: Sequence[str],
        emit: Callable[[dict[str, Any]], None] | None,
        *,
        index: int | None = None,
        logprobs: bool = False,
        streamable: Callable[[str], int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos = list(eos)
        self.stops = list(stops)
        self.emit = emit
        self.index = index
        self.logprobs = logprobs
        self.streamable = streamable
        self.sent = ""
        self.scored_sent = 0  # logprobs items already sent

    def update(self, tokens: Sequence[int], scored: Sequence[TokenLogprob] = ()) -> bool:
        """Look at all tokens generated so far; True when a stop string ended the text."""
        produced, _ = produced_tokens(tokens, self.eos, self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(produced, skip_special_tokens=True)
        safe, stopped = safe_prefix(text, self.stops)
        if self.emit is not None:
            if self.streamable is not None:
                safe = safe[: self.streamable(safe)]
            covered = scored[self.scored_sent : len(produced)] if self.logprobs else ()
            self._send(safe, lambda: public(covered, self.tokenizer))
        return stopped

    def finish(self, final_text: str, logprobs: Sequence[dict[str, Any]] | None = None) -> None:
        """Send what the final text (and its logprobs) hold beyond what was already sent."""
        rest = list(logprobs[self.scored_sent :]) if logprobs else []
        self._send(final_text, lambda: rest, final=True)

    def _send(
        self, text: str, items: Callable[[], list[dict[str, Any]]], final: bool = False
    ) -> None:
        if self.emit is None:
            return
        grew = len(text) > len(self.sent) and text.startswith(self.sent)
        if not grew and not (final and self.logprobs):
            return
        event: dict[str, Any] = {"text": text[len(self.sent) :] if grew else ""}
        if grew:
            self.sent = text
        if self.index is not None:
            event["index"] = self.index
        if self.logprobs:
            sent = items()
            if not sent and not grew:
                return
            event["logprobs"] = sent
            self.scored_sent += len(sent)
        self.emit(event)
