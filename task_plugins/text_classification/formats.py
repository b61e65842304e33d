"""The classification row format: {"text": str, "label": str or int} (CSV: text,label)."""

from __future__ import annotations

from typing import Any

from task_plugins.base import Row, RowFormat
from task_plugins.rows import check_text, json_type

CLASSIFICATION = "classification"


def _check_label(label: Any) -> str | None:
    # bool is an int in Python but true/false is almost always a mistake for a class name.
    if isinstance(label, bool) or not isinstance(label, str | int):
        return f"'label' must be a string or an integer, got {json_type(label)}"
    if isinstance(label, str) and not label.strip():
        return "'label' is empty"
    return None


def _check(row: Row) -> str | None:
    return check_text(row, "text") or _check_label(row["label"])


def _normalize(row: Row) -> Row:
    # labels are always strings in the model: 1 and "1" are the same class
    return {"text": row["text"], "label": str(row["label"])}


CLASSIFICATION_ROWS = RowFormat(
    name=CLASSIFICATION,
    columns=("text", "label"),
    check=_check,
    normalize=_normalize,
    chars=lambda row: len(row["text"]),
    label_key="label",
)
