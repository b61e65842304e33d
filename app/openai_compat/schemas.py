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

# the inference server's limits (worker/inference/schemas.py; tests/app/test_openapi.py
# compares them)
MAX_N = 16
MAX_TOP_LOGPROBS = 20


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
        if self.n is not None and not 1 <= self.n <= MAX_N:
            raise APIError(
                400,
                f"n is {self.n}; Tunery returns 1 to {MAX_N} choices per request.",
                param="n",
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
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # {"type": "text" | "json_object" | "json_schema", "json_schema": {...}}: checked by the
    # inference server, which enforces it by constrained decoding
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise APIError(
                400,
                f"top_logprobs is {self.top_logprobs}; it must be 0 to {MAX_TOP_LOGPROBS}.",
                param="top_logprobs",
            )
        if self.top_logprobs and not self.logprobs:
            raise APIError(
                400,
                "top_logprobs needs logprobs: set logprobs to true as well.",
                param="top_logprobs",
            )
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise APIError(
                400,
                "Give max_completion_tokens or max_tokens, not both.",
                param="max_tokens",
            )
        self._check_tool_choice()

    def _check_tool_choice(self) -> None:
        choice = self.tool_choice
        if choice is None or choice == "none":
            return
        if not self.tools:
            raise APIError(
                400, "tool_choice needs tools: send the tools it chooses from.", param="tool_choice"
            )
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            functions = [t.get("function") for t in self.tools if isinstance(t, dict)]
            names = [f.get("name") for f in functions if isinstance(f, dict)]
            if name not in names:
                raise APIError(
                    400,
                    f"tool_choice names function {name!r}, which is not among the tools "
                    f"({', '.join(str(n) for n in names)}); name one of them.",
                    param="tool_choice.function.name",
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
    # the legacy API's logprobs: how many of the likeliest tokens to list per position
    logprobs: int | None = Field(default=None, ge=0, le=5)

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
    "functions": ("the deprecated functions parameter (send tools instead)", _OFF),
    "function_call": (
        "the deprecated function_call (send tool_choice instead)",
        (*_OFF, "none", "auto"),
    ),
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
