"""Request and response bodies of the inference server (docs/internals.md).

Limits live here, in the types, so a request over them is refused with a message that names
the field and the limit before any model is touched.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from worker.inference.loading import ModelSpec

MAX_INPUTS = 64
MAX_INPUT_CHARS = 20_000
MAX_MESSAGES = 256
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
# a picture or sound as base64: 16 MiB of text, 12 MiB of file
MAX_MEDIA_CHARS = 16 * 1024 * 1024
MAX_N = 16  # sequences per input
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128


class _Strict(BaseModel):
    # unknown fields are refused: a misspelt parameter must not be silently ignored
    model_config = ConfigDict(extra="forbid")


class ModelSpecBody(_Strict):
    key: str = Field(min_length=1, max_length=512)
    task: Literal["classification", "causal-lm", "image-classification", "audio-classification"]
    base_model_dir: str = Field(min_length=1, max_length=4096)
    artifact: str | None = Field(default=None, min_length=1, max_length=1024)

    def to_spec(self) -> ModelSpec:
        return ModelSpec(self.key, self.task, self.base_model_dir, self.artifact)


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(max_length=MAX_INPUT_CHARS)  # a JSON object, as OpenAI sends it


class ToolCallItem(_Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(default="", max_length=MAX_INPUT_CHARS)
    # an assistant's earlier calls and a tool message's answer to one, as the chat
    # template renders them
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)


class FunctionSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatInput(_Strict):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    # functions the chat template shows the model; its tool calls are parsed back
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @model_validator(mode="after")
    def _limit_total_chars(self) -> ChatInput:
        total = sum(len(m.content) for m in self.messages)
        if total > MAX_INPUT_CHARS:
            raise ValueError(
                f"messages hold {total} characters in all; at most {MAX_INPUT_CHARS} are allowed"
            )
        if not any(m.content or m.tool_calls for m in self.messages):
            raise ValueError("every message is empty")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise ValueError(
                    f"tool_choice names function {self.tool_choice.function.name!r}, which is "
                    f"not among the tools ({', '.join(names)})"
                )
        return self


MediaText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_MEDIA_CHARS)]


class ImageInput(_Strict):
    # base64, or a data: URL
    image: MediaText


class AudioInput(_Strict):
    audio: MediaText


def _input_kind(value: Any) -> str:
    if isinstance(value, ImageInput) or (isinstance(value, dict) and "image" in value):
        return "image"
    if isinstance(value, AudioInput) or (isinstance(value, dict) and "audio" in value):
        return "audio"
    return "chat" if isinstance(value, dict | ChatInput) else "text"


PromptText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_INPUT_CHARS)]
InputItem = Annotated[
    Annotated[PromptText, Tag("text")]
    | Annotated[ChatInput, Tag("chat")]
    | Annotated[ImageInput, Tag("image")]
    | Annotated[AudioInput, Tag("audio")],
    Discriminator(_input_kind),
]
# the union tags appear in validation error locations; they are dropped from messages
INPUT_TAGS = frozenset({"text", "chat", "image", "audio"})


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema is given exactly when type is "json_schema"')
        return self


class Parameters(_Strict):
    max_new_tokens: int | None = Field(default=None, ge=1, le=2048, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, strict=True)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, strict=True)
    n: int | None = Field(default=None, ge=1, le=MAX_N, strict=True)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS, strict=True)
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> Parameters:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        # checked by hand: a union's own errors name its members, not the limit
        stops = [value] if isinstance(value, str) else value
        if value is None:
            return None
        if (
            not isinstance(stops, list)
            or not 1 <= len(stops) <= MAX_STOP_STRINGS
            or not all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in stops)
        ):
            raise ValueError(
                f"stop must be a string or a list of 1 to {MAX_STOP_STRINGS} strings, "
                f"each 1 to {MAX_STOP_CHARS} characters"
            )
        return value


class LoadRequest(_Strict):
    model: ModelSpecBody
    pin: bool = False


class LoadResponse(BaseModel):
    key: str
    load_seconds: float
    memory_bytes: int
    base: str | None
    base_memory_bytes: int | None


class UnloadRequest(_Strict):
    key: str = Field(min_length=1, max_length=512)


class UnloadResponse(BaseModel):
    key: str
    unloaded: bool


class ExportRequest(_Strict):
    model: ModelSpecBody
    format: Literal["merged"] = "merged"


class ExportResponse(BaseModel):
    artifact: str


class PredictRequest(_Strict):
    model: ModelSpecBody
    inputs: list[InputItem] = Field(min_length=1, max_length=MAX_INPUTS)
    parameters: Parameters = Field(default_factory=Parameters)
    # server-sent events, one text delta at a time; exactly one input
    stream: bool = False
    # set the pin state when the model is (re)loaded; deployments keep their model pinned
    # even after the server restarted and lost it
    pin: bool | None = None

    def plain_inputs(self) -> list[str | dict[str, Any]]:
        return [x if isinstance(x, str) else x.model_dump(exclude_none=True) for x in self.inputs]


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]]


class ModelStats(BaseModel):
    """One loaded model, as the service reports it and /internal/models lists it."""

    key: str
    pinned: bool
    load_seconds: float
    # an adapter: its own tensors, with base_memory_bytes the base copy it shares; any
    # other model: its whole weights
    memory_bytes: int
    base: str | None
    base_memory_bytes: int | None
    requests_served: int
    loaded_at: float
    last_used: float


class BaseStats(BaseModel):
    key: str
    memory_bytes: int
    load_seconds: float
    models: list[str]
    # its engine: requests accepted and not started, and sequences (generation) or inputs
    # (classification) being computed
    waiting: int = 0
    running: int = 0
    # forwards run (micro-batches, or prefill and decode steps), the rows they held in all
    # (rows / batches: the mean batch achieved) and the most one held
    batches: int = 0
    batched_rows: int = 0
    largest_batch: int = 0


class ModelsResponse(BaseModel):
    models: list[ModelStats]
    bases: list[BaseStats]
    max_models: int
    memory_budget_bytes: int | None
    # everything loaded, each base counted once
    memory_bytes: int
    max_batch_size: int
    max_wait_ms: float
    max_running: int
    max_queue: int
