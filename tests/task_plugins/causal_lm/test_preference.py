"""The preference format: both layouts detected at upload, every problem named by line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.files.formats import inspect_file, read_examples

SYSTEM = {"role": "system", "content": "be brief"}
USER = {"role": "user", "content": "capital of france?"}


def openai_row(
    preferred: str = "paris", rejected: str = "i do not know", **changes: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "input": {"messages": [SYSTEM, USER]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }
    row.update(changes)
    return row


def trl_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": "capital of france?", "chosen": "paris", "rejected": "rome"}
    row.update(changes)
    return row


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def only_error(tmp_path: Path, bad: Any) -> dict[str, Any]:
    """The one problem of a file whose second line is `bad`."""
    good = openai_row() if isinstance(bad, dict) and "input" in bad else trl_row()
    report = inspect_file(write(tmp_path / "prefs.jsonl", [good, bad]), "prefs.jsonl")
    assert not report.ok
    assert len(report.errors) == 1, report.errors
    error: dict[str, Any] = report.errors[0]
    assert error["line"] == 2
    return error


def test_openai_rows_read_as_prompt_chosen_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "prefs.jsonl", [openai_row(), openai_row("lyon", "nice")])
    report = inspect_file(path, "prefs.jsonl")
    assert report.ok, report.errors
    assert report.format == "preference"
    assert report.stats["rows"] == 2
    fmt, rows = read_examples(path, "prefs.jsonl")
    assert fmt == "preference"
    assert rows[0] == {"prompt": [SYSTEM, USER], "chosen": "paris", "rejected": "i do not know"}


def test_trl_rows_as_strings_and_messages(tmp_path: Path) -> None:
    conversational = trl_row(
        prompt=[USER],
        chosen=[{"role": "assistant", "content": "paris"}],
        rejected=[{"role": "assistant", "content": "rome"}],
    )
    path = write(tmp_path / "prefs.jsonl", [trl_row(), conversational])
    fmt, rows = read_examples(path, "prefs.jsonl")
    assert fmt == "preference"
    assert rows == [
        {"prompt": "capital of france?", "chosen": "paris", "rejected": "rome"},
        {"prompt": [USER], "chosen": "paris", "rejected": "rome"},
    ]


def test_trl_strings_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected\ncapital?,paris,rome\nsay hi,hi,bye\n")
    fmt, rows = read_examples(path, "prefs.csv")
    assert fmt == "preference"
    assert rows[1] == {"prompt": "say hi", "chosen": "hi", "rejected": "bye"}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (openai_row(preferred_output=[]), "'preferred_output' must be a list of exactly one"),
        (
            openai_row(non_preferred_output=[{"role": "assistant", "content": ""}]),
            "non_preferred_output[0].content is empty",
        ),
        (
            openai_row(
                preferred_output=[
                    {"role": "assistant", "content": "paris"},
                    {"role": "assistant", "content": "again"},
                ]
            ),
            "'preferred_output' has 2 messages (assistant, assistant); it must be exactly one",
        ),
        (
            openai_row(preferred_output=[{"role": "user", "content": "paris"}]),
            "preferred_output[0].role must be 'assistant', got 'user'",
        ),
        (openai_row("same", "same"), "preferred_output and non_preferred_output are equal"),
        (openai_row(input={}), "input has no 'messages'"),
        (openai_row(input=[USER]), "'input' must be an object with 'messages', got a list"),
        (openai_row(input={"messages": []}), "'input.messages' must be a non-empty list"),
        (
            openai_row(input={"messages": [USER, {"role": "assistant", "content": "x"}]}),
            "input.messages ends with an assistant message",
        ),
        (
            openai_row(input={"messages": [{"role": "wizard", "content": "x"}]}),
            "input.messages[0].role must be one of system, developer, user, assistant, tool, "
            'function, got "wizard"',
        ),
        (
            openai_row(input={"messages": [USER], "tools": [{"type": "function"}]}),
            "input has tools: tool calling is not supported",
        ),
        (openai_row(input={"messages": [USER], "extra": 1}), "input has unknown key(s) extra"),
        (trl_row(chosen=""), "'chosen' is empty"),
        (trl_row(rejected="paris"), "chosen and rejected are equal"),
        (trl_row(prompt=3), "'prompt' must be a string or a list of messages, got a number"),
        (trl_row(prompt="  "), "'prompt' is empty"),
        (trl_row(rejected=None), "'rejected' must be a string or a list of one assistant message"),
        (
            trl_row(chosen=[{"role": "assistant", "content": "a"}, USER]),
            "'chosen' has 2 messages (assistant, user)",
        ),
    ],
)
def test_each_problem_names_line_and_field(tmp_path: Path, bad: Any, says: str) -> None:
    error = only_error(tmp_path, bad)
    assert says in error["message"], error["message"]


def test_layouts_may_not_mix_with_other_formats(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prefs.jsonl", [openai_row(), {"prompt": "a", "completion": "b"}, trl_row()]
    )
    report = inspect_file(path, "prefs.jsonl")
    assert report.errors == [
        {
            "line": 2,
            "message": "this row is in the prompt-completion format but the file is preference "
            "(from its first row)",
        }
    ]


def test_openai_layout_is_jsonl_only(tmp_path: Path) -> None:
    path = tmp_path / "prefs.csv"
    path.write_text("input,preferred_output,non_preferred_output\na,b,c\n")
    report = inspect_file(path, "prefs.csv")
    assert "supported in JSONL files only" in report.errors[0]["message"]
