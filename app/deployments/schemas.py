from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.tables import DeploymentRow

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
    requests_served: int

    @classmethod
    def of(cls, row: DeploymentRow) -> DeploymentPublic:
        return cls(
            id=row.id,
            model=row.model,
            status=row.status,
            created_at=row.created_at,
            error=row.error,
            load_seconds=row.load_seconds,
            memory_bytes=row.memory_bytes,
            base_memory_bytes=row.base_memory_bytes,
            requests_served=row.requests_served,
        )
