"""Hypothesis strategies drawn from pydantic models: every field, within its declared range.

Built from the models themselves (annotations and annotated_types constraints), so a field
added to the job spec is drawn by the property tests without anyone remembering to. A type
this module does not know fails loudly: extend `from_annotation`.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

# bounds for numbers whose field has none (a seed, say, has its own)
_ANY_INT = 10**6


def models(
    model: type[BaseModel], *, all_fields: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    """A dict for `model`: its required fields, and any of its optional ones (all of them
    with `all_fields`), each drawn from its own annotation."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, field in model.model_fields.items():
        strategy = from_field(field)
        (required if field.is_required() or all_fields else optional)[name] = strategy
    return st.fixed_dictionaries(required, optional=optional)


def from_field(field: FieldInfo) -> st.SearchStrategy[Any]:
    return _constrained(field.annotation, field.metadata)


def from_annotation(annotation: Any) -> st.SearchStrategy[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        return _constrained(base, metadata)
    if origin in (Union, types.UnionType):
        return st.one_of([from_annotation(arg) for arg in get_args(annotation)])
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation)
        return st.lists(from_annotation(item), min_size=1, max_size=3)
    return _constrained(annotation, [])


def _constrained(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    bounds = _bounds(metadata)
    if get_origin(annotation) is not None:
        if bounds:
            raise TypeError(f"constraints on {annotation} are not drawn: extend strategies.py")
        return from_annotation(annotation)
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        low = bounds.get("ge", bounds["gt"] + 1 if "gt" in bounds else -_ANY_INT)
        high = bounds.get("le", bounds["lt"] - 1 if "lt" in bounds else _ANY_INT)
        return st.integers(min_value=int(low), max_value=int(high))
    if annotation is float:
        return st.floats(
            min_value=bounds.get("ge", bounds.get("gt")),
            max_value=bounds.get("le", bounds.get("lt")),
            exclude_min="gt" in bounds,
            exclude_max="lt" in bounds,
            allow_nan=False,
            allow_infinity=False,
        )
    if annotation is str:
        return st.text(
            alphabet=st.characters(codec="ascii", categories=("L", "N")),
            min_size=int(bounds.get("min_length", 1)),
            max_size=int(bounds.get("max_length", 16)),
        )
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return models(annotation)
    raise TypeError(f"no strategy for {annotation!r}: extend tests/support/strategies.py")


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(_bounds(item.metadata))
        elif isinstance(item, annotated_types.Ge):
            found["ge"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            found["gt"] = item.gt
        elif isinstance(item, annotated_types.Le):
            found["le"] = item.le
        elif isinstance(item, annotated_types.Lt):
            found["lt"] = item.lt
        elif isinstance(item, annotated_types.MinLen):
            found["min_length"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            found["max_length"] = item.max_length
    return found
