from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.tables import EvaluationRow

ModelId = Annotated[str, Field(min_length=1, max_length=512)]


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelId
    file: Annotated[str, Field(min_length=1, max_length=64)]
    # scored on the same rows; the result shows model minus compare_to
    compare_to: ModelId | None = None


class EvaluationPublic(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    model: str
    compare_to: str | None
    file: str
    task: str
    status: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    rows: int | None
    metrics: dict[str, Any] | None
    compare_to_metrics: dict[str, Any] | None
    # model minus compare_to, for every number both have
    difference: dict[str, Any] | None
    error: dict[str, Any] | None

    @classmethod
    def of(cls, row: EvaluationRow) -> EvaluationPublic:
        return cls(
            id=row.id,
            model=row.model,
            compare_to=row.compare_to,
            file=row.file_id,
            task=row.task,
            status=row.status,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            rows=row.rows,
            metrics=row.metrics,
            compare_to_metrics=row.compare_metrics,
            difference=row.difference,
            error=row.error,
        )
