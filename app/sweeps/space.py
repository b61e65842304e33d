"""A sweep's search space: dimensions over job fields by path, checked against the job
schema (app/jobs/schemas.py JobCreate), and the job body a trial's parameters make.

A path names a field of the body of POST /v1/fine_tuning/jobs, dots between levels:
`method.supervised.hyperparameters.learning_rate`, `training_type.r`. The older top-level
`hyperparameters.` prefix is read as `method.supervised.hyperparameters.`.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError

from app.failures import APIError
from app.jobs.schemas import JobCreate
from app.jobs.spec import FreezeType, FullType, LoraType, QLoraType, Strict

HYPERPARAMETERS = "method.supervised.hyperparameters"
# fields a trial may not change: its data (every trial is measured on the same validation
# rows) and what only names the job
FIXED_FIELDS = frozenset(
    {"model", "training_file", "validation_file", "from_checkpoint", "suffix", "metadata"}
)
TRAINING_TYPES: dict[str, type[BaseModel]] = {
    "lora": LoraType,
    "qlora": QLoraType,
    "full": FullType,
    "freeze": FreezeType,
}
MAX_DIMENSIONS = 16
MAX_CHOICES = 64

Scalar = str | int | float | bool | None


class Uniform(Strict):
    type: Literal["uniform"]
    low: float | int
    high: float | int


class LogUniform(Strict):
    type: Literal["log_uniform"]
    low: float | int
    high: float | int


class IntRange(Strict):
    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False


class Choice(Strict):
    type: Literal["choice"]
    values: Annotated[list[Scalar], Field(min_length=1, max_length=MAX_CHOICES)]


Dimension = Annotated[Uniform | LogUniform | IntRange | Choice, Field(discriminator="type")]
SearchSpace = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=200)], Dimension],
    Field(min_length=1, max_length=MAX_DIMENSIONS),
]


def bad(path: str, message: str) -> APIError:
    return APIError(
        400,
        f"search_space['{path}']: {message}",
        param=f"search_space.{path}",
        code="invalid_search_space",
    )


def normalized_path(path: str) -> str:
    if path.startswith("hyperparameters."):
        return HYPERPARAMETERS + path.removeprefix("hyperparameters")
    return path


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation holds (through Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def check_path(path: str) -> None:
    """The path names a leaf field of the job body, or a 400 that says which part does not."""
    parts = path.split(".")
    if parts[0] in FIXED_FIELDS:
        raise bad(
            path,
            f"{parts[0]} is the same for every trial of a sweep; set it in the job, not in the "
            "search space.",
        )
    models: list[type[BaseModel]] = [JobCreate]
    walked: list[str] = []
    for part in parts:
        fields = {name: f for m in models for name, f in m.model_fields.items()}
        if part not in fields:
            where = ".".join(walked) or "the job"
            raise bad(
                path,
                f"'{part}' is not a field of {where}; its fields are {', '.join(sorted(fields))}.",
            )
        walked.append(part)
        models = [
            found
            for m in models
            if part in m.model_fields
            for found in _models_in(m.model_fields[part].annotation)
        ]
    if models:
        names = sorted({name for m in models for name in m.model_fields})
        raise bad(
            path,
            f"{path} is an object; name one of its fields ({', '.join(names)}) instead.",
        )


def check_dimension(path: str, dimension: Uniform | LogUniform | IntRange | Choice) -> None:
    """The range itself makes sense (before any value is tried on the job)."""
    if isinstance(dimension, Choice):
        seen: list[Scalar] = []
        for value in dimension.values:
            if value in seen:
                raise bad(path, f"values lists {value!r} twice; list each choice once.")
            seen.append(value)
        return
    low, high = dimension.low, dimension.high
    if not (math.isfinite(low) and math.isfinite(high)):
        raise bad(path, "low and high must be finite numbers.")
    if low > high:
        raise bad(path, f"low {low} is above high {high}; swap them.")
    if isinstance(dimension, LogUniform) and low <= 0:
        raise bad(path, f"a log_uniform range needs low > 0; got low {low}.")
    if isinstance(dimension, IntRange):
        if dimension.log and low <= 0:
            raise bad(path, f"an int range with log: true needs low >= 1; got low {low}.")
        if dimension.log and dimension.step != 1:
            raise bad(path, "an int range with log: true takes no step (leave step out).")
        if (high - low) % dimension.step:
            raise bad(
                path,
                f"high - low ({high - low}) is not a multiple of step {dimension.step}; "
                f"set high to {low + (high - low) // dimension.step * dimension.step}.",
            )


def candidates(dimension: Uniform | LogUniform | IntRange | Choice) -> list[Any]:
    """The values a range is checked at: its ends, or every choice (a float range's ends as
    floats: it samples floats, which an integer field refuses)."""
    if isinstance(dimension, Choice):
        return list(dimension.values)
    if isinstance(dimension, IntRange):
        return [dimension.low, dimension.high]
    return [float(dimension.low), float(dimension.high)]


def grid_values(path: str, dimension: Uniform | LogUniform | IntRange | Choice) -> list[Any]:
    """Every value a grid sweep tries on this dimension."""
    if isinstance(dimension, Choice):
        return list(dimension.values)
    if isinstance(dimension, IntRange) and not dimension.log:
        return list(range(dimension.low, dimension.high + 1, dimension.step))
    raise bad(
        path,
        f"the grid sampler needs a choice or an int range; a {dimension.type} range has no "
        "grid. List the values with {'type': 'choice', 'values': [...]}.",
    )


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def job_body(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The job a trial runs: the base job with each parameter set at its path. Training-type
    fields the sampled type does not have (LoRA's r on a full fine-tune) are dropped."""
    body = copy.deepcopy(base)
    if "hyperparameters" in body and "method" not in body:
        body["method"] = {
            "type": "supervised",
            "supervised": {"hyperparameters": body.pop("hyperparameters")},
        }
    for path, value in params.items():
        path = normalized_path(path)
        if path.startswith("training_type.") and not isinstance(body.get("training_type"), dict):
            body["training_type"] = {"type": "lora"}
        _set(body, path, value)
    training_type = body.get("training_type")
    if isinstance(training_type, dict):
        model = TRAINING_TYPES.get(str(training_type.get("type")))
        if model is not None:
            body["training_type"] = {
                k: v for k, v in training_type.items() if k in model.model_fields
            }
    return body


def checked_job(path: str, value: Any, body: dict[str, Any]) -> JobCreate:
    """The body as a job request, or a 400 naming the dimension and the value it refused."""
    try:
        return JobCreate.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise bad(
            path, f"the value {value!r} makes an invalid job ({where}: {error['msg']})."
        ) from None
