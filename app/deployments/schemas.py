from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.deployments.usage import Usage

# The inference server checks every limit again and says which one; these only keep
# absurd bodies from crossing the wire.
MAX_INPUTS = 64


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: Annotated[str, Field(min_length=1, max_length=512)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: Annotated[list[str | dict[str, Any]], Field(min_length=1, max_length=MAX_INPUTS)]
    parameters: dict[str, Any] = Field(default_factory=dict)
    # server-sent events of the new text as it is generated (causal LM, exactly one input)
    stream: bool = False


class ModelPredictRequest(PredictRequest):
    """POST /v1/predict: any model, loaded just in time, without a deployment."""

    model: Annotated[str, Field(min_length=1, max_length=512)]


class DeploymentPublic(BaseModel):
    id: str
    object: Literal["deployment"] = "deployment"
    model: str
    status: str
    created_at: int
    error: dict[str, Any] | None
    load_seconds: float | None
    # an adapter: its own weights, beside base_memory_bytes for the base copy it shares
    # with every other model of that base; any other model: its whole weights
    memory_bytes: int | None
    base_memory_bytes: int | None
    # predict calls the inference server answered, and their tokens (causal LM)
    requests_served: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, row: Any, pending: Usage | None = None) -> DeploymentPublic:
        """From a DeploymentRow or a read of one (app/reads.py), plus the usage this process
        counted and has not written to it yet."""
        pending = pending or Usage()
        return cls(
            id=row.id,
            model=row.model,
            status=row.status,
            created_at=row.created_at,
            error=row.error,
            load_seconds=row.load_seconds,
            memory_bytes=row.memory_bytes,
            base_memory_bytes=row.base_memory_bytes,
            requests_served=(row.requests_served or 0) + pending.requests,
            prompt_tokens=(row.prompt_tokens or 0) + pending.prompt_tokens,
            completion_tokens=(row.completion_tokens or 0) + pending.completion_tokens,
        )


class ProjectUsage(BaseModel):
    """What the calling project was served: through its deployments, `/v1/predict`, chat and
    completions (a Tunery extension; OpenAI's usage API is per organisation and by date)."""

    object: Literal["usage"] = "usage"
    project_id: str
    # requests the inference server answered, and their tokens (causal LM)
    requests_served: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
