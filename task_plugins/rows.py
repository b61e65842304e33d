"""Checks that row formats share: a non-empty string field, and naming a JSON value's type."""

from __future__ import annotations

from typing import Any

from task_plugins.base import Row


def check_text(row: Row, key: str) -> str | None:
    value = row[key]
    if not isinstance(value, str):
        return f"'{key}' must be a string, got {json_type(value)}"
    if not value.strip():
        return f"'{key}' is empty"
    return None


def text_chars(row: Row, *keys: str) -> int:
    return sum(len(row[key]) for key in keys)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
