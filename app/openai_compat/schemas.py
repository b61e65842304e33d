"""Request bodies of /v1/chat/completions and /v1/completions, as the openai SDK sends them.

Every parameter the SDK can send is known here: the ones Tunery maps to generation, the
ones that change nothing (tags, caching hints) and are ignored, and the ones Tunery cannot
honour, which are refused with a 400 naming them unless they hold their "off" value.
Ranges (max_tokens up to 2048, temperature 0..2, ...) are checked by the inference server;
its errors are reported under the names used here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.failures import APIError


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _Generation(BaseModel):
    # extra="allow": what is not declared is sorted by check_unsupported, with a message
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    def check(self) -> None:
        if self.n is not None and self.n != 1:
            raise APIError(
                400,
                f"n is {self.n}, but Tunery returns one choice per request: set n to 1 (or "
                "leave it out) and send several requests for several choices.",
                param="n",
                code="unsupported_parameter",
            )
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options is only allowed with stream=true.", param="stream_options"
            )
        check_unsupported(self.model_extra or {}, self._unsupported())

    def _unsupported(self) -> dict[str, tuple[str, tuple[Any, ...]]]:
        return {}


class ChatCompletionRequest(_Generation):
    messages: list[Any] = Field(min_length=1)
    max_completion_tokens: int | None = None

    def check(self) -> None:
        super().check()
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise APIError(
                400,
                "Give max_completion_tokens or max_tokens, not both.",
                param="max_tokens",
            )

    def token_limit(self) -> tuple[int | None, str]:
        """The limit on new tokens and the name the client gave it."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def _unsupported(self) -> dict[str, tuple[str, tuple[Any, ...]]]:
        return CHAT_UNSUPPORTED


class CompletionRequest(_Generation):
    prompt: str | list[Any]

    def _unsupported(self) -> dict[str, tuple[str, tuple[Any, ...]]]:
        return COMPLETION_UNSUPPORTED


# Parameters that do not change the generated text: accepted and ignored.
IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "safety_identifier",
        "parallel_tool_calls",
    }
)
_OFF: tuple[Any, ...] = (None, False, 0, [], {})
# name -> (what it asks for, the values that ask for nothing)
COMMON_UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "frequency_penalty": ("repetition penalties", _OFF),
    "presence_penalty": ("repetition penalties", _OFF),
    "logit_bias": ("logit bias", _OFF),
}
CHAT_UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    **COMMON_UNSUPPORTED,
    "logprobs": ("log probabilities", _OFF),
    "top_logprobs": ("log probabilities", _OFF),
    "tools": ("tool calling", _OFF),
    "functions": ("function calling", _OFF),
    "tool_choice": ("tool calling", (*_OFF, "none", "auto")),
    "function_call": ("function calling", (*_OFF, "none", "auto")),
    "response_format": ("structured output", (*_OFF, {"type": "text"})),
    "audio": ("audio output", _OFF),
    "modalities": ("audio output", (*_OFF, ["text"])),
    "prediction": ("predicted outputs", _OFF),
    "web_search_options": ("web search", _OFF),
    "reasoning_effort": ("reasoning options", _OFF),
    "verbosity": ("reasoning options", _OFF),
    "moderation": ("moderation", _OFF),
}
COMPLETION_UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    **COMMON_UNSUPPORTED,
    "logprobs": ("log probabilities", _OFF),
    "best_of": ("best_of", (*_OFF, 1)),
    "echo": ("echoing the prompt", _OFF),
    "suffix": ("insertion (suffix)", (*_OFF, "")),
}


def check_unsupported(
    extra: dict[str, Any], unsupported: dict[str, tuple[str, tuple[Any, ...]]]
) -> None:
    for name, value in extra.items():
        if name in IGNORED:
            continue
        if name in unsupported:
            what, off = unsupported[name]
            if _is_off(value, off):
                continue
            raise APIError(
                400,
                f"Tunery does not support {what}: remove {name} from the request.",
                param=name,
                code="unsupported_parameter",
            )
        raise APIError(
            400,
            f"Unknown parameter {name}; remove it (see /docs for the accepted parameters).",
            param=name,
            code="unknown_parameter",
        )


def _is_off(value: Any, off: tuple[Any, ...]) -> bool:
    # true and 1 are equal in Python; a flag only matches a flag
    return value is None or any(
        value == o and isinstance(value, bool) == isinstance(o, bool) for o in off if o is not None
    )
