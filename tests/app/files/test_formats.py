"""Dataset detection and validation: every format in JSONL and CSV, every error with its line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import task_plugins
from app.files.formats import (
    LONG_EXAMPLE_TOKENS,
    DatasetError,
    FileReport,
    inspect_file,
    long_examples_warning,
    read_examples,
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def jsonl(*rows: Any) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def inspect(tmp_path: Path, name: str, content: str | bytes) -> FileReport:
    return inspect_file(write(tmp_path, name, content), name)


def only_error(report: FileReport) -> dict[str, Any]:
    assert not report.ok
    assert len(report.errors) == 1, report.errors
    return report.errors[0]


CHAT_ROW = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
}


# ---- valid files ----


def test_classification_jsonl(tmp_path: Path) -> None:
    content = jsonl({"text": "great", "label": "pos"}, {"text": "bad", "label": "neg"})
    content += "\n   \n" + jsonl({"text": "fine", "label": "pos"})
    report = inspect(tmp_path, "train.jsonl", content)
    assert report.ok and report.errors == [] and report.status_details is None
    assert report.format == "classification"
    assert report.stats["rows"] == 3
    assert report.stats["labels"] == {"neg": 1, "pos": 2}
    assert report.stats["max_chars"] == 5


def test_integer_labels_are_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", jsonl({"text": "a", "label": 1}, {"text": "b", "label": "1"}))
    assert inspect_file(path, "t.jsonl").stats["labels"] == {"1": 2}
    fmt, rows = read_examples(path, "t.jsonl")
    assert fmt == "classification"
    assert rows == [{"text": "a", "label": "1"}, {"text": "b", "label": "1"}]


def test_prompt_completion_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, "pc.json", jsonl({"prompt": "2+2=", "completion": " 4"}))
    report = inspect_file(path, "pc.json")
    assert report.ok and report.format == "prompt-completion" and report.stats["rows"] == 1
    assert "labels" not in report.stats
    assert read_examples(path, "pc.json") == (
        "prompt-completion",
        [{"prompt": "2+2=", "completion": " 4"}],
    )


def test_chat_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, "chat.jsonl", jsonl(CHAT_ROW, CHAT_ROW))
    report = inspect_file(path, "chat.jsonl")
    assert report.ok and report.format == "chat" and report.stats["rows"] == 2
    assert report.stats["max_chars"] == len("be brief") + len("hi") + len("hello")
    assert read_examples(path, "chat.jsonl") == ("chat", [CHAT_ROW, CHAT_ROW])


def test_classification_csv(tmp_path: Path) -> None:
    content = '\ufefftext,label\n"hello, world",pos\n\n"two\nlines",neg\nplain,pos\n'
    path = write(tmp_path, "train.csv", content)
    report = inspect_file(path, "train.csv")
    assert report.ok, report.errors
    assert report.format == "classification"
    assert report.stats == {
        "rows": 3,
        "max_chars": 12,
        "total_chars": 26,
        "max_tokens_estimate": 3,
        "long_examples": {"count": 0, "threshold_tokens": LONG_EXAMPLE_TOKENS, "lines": []},
        "labels": {"neg": 1, "pos": 2},
    }
    _, rows = read_examples(path, "train.csv")
    assert rows[1] == {"text": "two\nlines", "label": "neg"}


def test_prompt_completion_csv(tmp_path: Path) -> None:
    report = inspect(tmp_path, "pc.csv", "Prompt, Completion\nwhat is 1+1?, 2\n")
    assert report.ok and report.format == "prompt-completion" and report.stats["rows"] == 1


def test_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    as_jsonl = inspect(tmp_path, "data.txt", "\n\n" + jsonl({"text": "a", "label": "x"}))
    assert as_jsonl.ok and as_jsonl.format == "classification"
    as_csv = inspect(tmp_path, "data", "prompt,completion\na,b\n")
    assert as_csv.ok and as_csv.format == "prompt-completion"


def test_huge_line_is_streamed(tmp_path: Path) -> None:
    long_text = "word " * 2_100_000  # a 10 MB line
    report = inspect(tmp_path, "big.jsonl", jsonl({"text": long_text, "label": "a"}))
    assert report.ok and report.stats["max_chars"] == len(long_text)
    csv_report = inspect(tmp_path, "big.csv", f"text,label\n{long_text},a\n")
    assert csv_report.ok, csv_report.errors


def test_formats_by_task() -> None:
    assert {
        "classification": {"classification"},
        "causal-lm": {"prompt-completion", "chat"},
        "image-classification": {"image-classification"},
        "audio-classification": {"audio-classification"},
    } == {task.name: set(task.formats_for()) for task in task_plugins.TASKS}


def test_formats_module_does_not_import_torch() -> None:
    # The API imports this module to check uploads; it must not drag torch in.
    code = "import sys, app.files.formats; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[3]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


# ---- errors, each with its line ----


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": }\n', 2, "invalid JSON"),
        ('{"text": "a", "label": "x"}\n\n["a", "x"]\n', 3, "must be a JSON object"),
        ('{"text": "a", "label": "x"}\n{"text": "b"}\n', 2, "match no format"),
        ('{"text": "a", "label": "x", "id": 3}\n', 1, "unexpected key(s) id"),
        ('{"text": 5, "label": "x"}\n', 1, "'text' must be a string"),
        ('{"text": "  ", "label": "x"}\n', 1, "'text' is empty"),
        ('{"text": "a", "label": 1.5}\n', 1, "'label' must be a string or an integer"),
        ('{"text": "a", "label": true}\n', 1, "'label' must be a string or an integer"),
        ('{"text": "a", "label": ""}\n', 1, "'label' is empty"),
        ('{"prompt": "a", "completion": null}\n', 1, "'completion' must be a string"),
        ('{"prompt": "", "completion": "b"}\n', 1, "'prompt' is empty"),
        (
            '{"text": "a", "label": "x"}\n{"prompt": "a", "completion": "b"}\n',
            2,
            "prompt-completion",
        ),
        ('{"text": "a", "label": "x", "prompt": "p", "completion": "c"}\n', 1, "several formats"),
        ("[\n", 1, "JSON array is not supported"),
        ('{"text": "a", "label": ' + "[" * 100_000 + "\n", 1, "invalid JSON"),
        ('{"text": "a", "label": ' + "9" * 5000 + "}\n", 1, "invalid JSON"),
    ],
)
def test_jsonl_row_errors(tmp_path: Path, content: str, line: int, fragment: str) -> None:
    error = only_error(inspect(tmp_path, "t.jsonl", content))
    assert error["line"] == line
    assert fragment in error["message"]


ASSISTANT = {"role": "assistant", "content": "ok"}


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "'messages' must be a non-empty list"),
        ("hi", "'messages' must be a non-empty list"),
        (["hi"], "messages[0] must be an object"),
        ([{"role": "user"}, ASSISTANT], "messages[0] has no 'content'"),
        ([{"content": "a"}, ASSISTANT], "messages[0] has no 'role'"),
        (
            [{"role": "user", "content": "a", "id": 3}, ASSISTANT],
            "messages[0] has unknown key(s) id; a message may only have role, content, name, "
            "weight, tool_calls, function_call, tool_call_id",
        ),
        (
            [{"role": "bot", "content": "a"}, ASSISTANT],
            "messages[0].role must be one of system, developer, user, assistant, tool, function, "
            'got "bot"',
        ),
        ([{"role": "assistant", "content": 3}], "messages[0].content must be a string"),
        (
            [{"role": "assistant", "content": None}],
            "messages[0].content must be a string, got null",
        ),
        (
            [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}],
            "content parts (a list) are not supported",
        ),
        ([ASSISTANT, {"role": "user", "content": ""}], "messages[1].content is empty"),
        (
            [ASSISTANT, {"role": "tool", "content": "42", "tool_call_id": "c1"}],
            'messages[1].tool_call_id "c1" matches no earlier tool call',
        ),
        (
            [{"role": "assistant", "content": "x", "tool_calls": []}],
            "messages[0].tool_calls must be a non-empty list, got an empty list",
        ),
        ([{"role": "user", "content": "a", "name": 5}, ASSISTANT], "name must be a non-empty"),
        (
            [{"role": "user", "content": "a", "weight": 1}, ASSISTANT],
            "messages[0].weight is only allowed on assistant messages",
        ),
        ([{"role": "assistant", "content": "a", "weight": 2}], "weight must be 0 or 1, got 2"),
        ([{"role": "assistant", "content": "a", "weight": True}], "weight must be 0 or 1"),
        (
            [{"role": "assistant", "content": "a", "weight": 0}],
            "every assistant message has weight 0: nothing to learn from",
        ),
        ([{"role": "user", "content": "a"}], "no assistant message"),
    ],
)
def test_chat_errors(tmp_path: Path, messages: Any, fragment: str) -> None:
    content = jsonl(CHAT_ROW, {"messages": messages})
    error = only_error(inspect(tmp_path, "chat.jsonl", content))
    assert error == {"line": 2, "message": error["message"]}
    assert fragment in error["message"]


def test_chat_name_and_weight_are_accepted_and_not_trained_on(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "ann"},
            {"role": "assistant", "content": "hello", "weight": 1},
        ]
    }
    path = write(tmp_path, "chat.jsonl", jsonl(row))
    assert inspect_file(path, "chat.jsonl").ok
    assert read_examples(path, "chat.jsonl") == ("chat", [CHAT_ROW])


def test_too_few_examples_fail_the_file_as_a_whole(tmp_path: Path) -> None:
    nine = jsonl(*[CHAT_ROW] * 9)
    report = inspect_file(write(tmp_path, "nine.jsonl", nine), "nine.jsonl", min_examples=10)
    assert only_error(report) == {
        "line": 0,
        "message": "the file has 9 examples; fine-tuning needs at least 10: add examples",
    }
    assert report.status_details == report.errors[0]["message"]
    assert report.stats["rows"] == 9
    ten = write(tmp_path, "ten.jsonl", jsonl(*[CHAT_ROW] * 10))
    assert inspect_file(ten, "ten.jsonl", min_examples=10).ok
    # a bad row still counts as an example: both problems are told at once
    bad = jsonl(*[CHAT_ROW] * 7, {"messages": []})
    report = inspect_file(write(tmp_path, "bad.jsonl", bad), "bad.jsonl", min_examples=10)
    assert [e["line"] for e in report.errors] == [0, 8]
    assert "has 8 examples" in report.errors[0]["message"]
    assert report.status_details is not None and report.status_details.endswith(
        "(and 1 more problem)"
    )


def test_long_examples_are_counted_with_their_lines(tmp_path: Path) -> None:
    long_text = "word " * 400  # 2000 characters: about 500 tokens
    rows = [
        {"prompt": "short", "completion": "answer"},
        {"prompt": long_text, "completion": "answer"},
        {"prompt": "short", "completion": long_text},
    ]
    report = inspect(tmp_path, "pc.jsonl", jsonl(*rows))
    assert report.ok, report.errors
    long = report.stats["long_examples"]
    assert long == {"count": 2, "threshold_tokens": LONG_EXAMPLE_TOKENS, "lines": [2, 3]}
    assert report.stats["max_tokens_estimate"] == (len(long_text) + len("answer") + 3) // 4
    warning = long_examples_warning(report.stats)
    assert warning is not None
    assert warning.startswith(f"2 examples are estimated over {LONG_EXAMPLE_TOKENS} tokens")
    assert "lines 2, 3" in warning and "max_seq_length" in warning
    higher = inspect_file(
        write(tmp_path, "pc2.jsonl", jsonl(*rows)), "pc2.jsonl", long_example_tokens=1000
    )
    assert higher.stats["long_examples"]["count"] == 0
    assert long_examples_warning(higher.stats) is None


def test_long_example_threshold_is_the_default_max_seq_length() -> None:
    from app.jobs.hyperparameters import DEFAULT_MAX_SEQ_LENGTH

    assert LONG_EXAMPLE_TOKENS == DEFAULT_MAX_SEQ_LENGTH


def test_non_utf8_line(tmp_path: Path) -> None:
    content = jsonl({"text": "a", "label": "x"}).encode() + b'{"text": "caf\xe9", "label": "x"}\n'
    content += jsonl({"text": "b", "label": "x"}).encode()
    report = inspect(tmp_path, "t.jsonl", content)
    error = only_error(report)
    assert error["line"] == 2 and "not valid UTF-8" in error["message"]
    assert report.stats["rows"] == 2  # the lines around it still count


def test_non_utf8_csv_keeps_line_numbers(tmp_path: Path) -> None:
    content = b"text,label\n\xff\xfe,x\nfine,x\n,x\n"
    errors = inspect(tmp_path, "t.csv", content).errors
    assert [e["line"] for e in errors] == [2, 4]
    assert "UTF-8" in errors[0]["message"] and "'text' is empty" in errors[1]["message"]


@pytest.mark.parametrize("content", ["", "\n  \n", "text,label\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    name = "t.csv" if content.startswith("text") else "t.jsonl"
    report = inspect(tmp_path, name, content)
    assert only_error(report) == {"line": 0, "message": "the file has no rows"}
    assert report.stats["rows"] == 0
    assert report.status_details == "the file has no rows"


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("text,category", "must be 'text,label' or 'prompt,completion'"),
        ("text;label", "separated by commas"),
        ("text,label,id", "unexpected CSV column(s) id"),
        ("text,label,text", "repeats a column"),
        ("messages", "JSONL files only"),
    ],
)
def test_csv_header_errors(tmp_path: Path, header: str, fragment: str) -> None:
    error = only_error(inspect(tmp_path, "t.csv", f"{header}\na,b\n"))
    assert error["line"] == 1 and fragment in error["message"]


def test_csv_row_errors(tmp_path: Path) -> None:
    content = "text,label\nok,a\nonly one field\nx,y,z\n,b\n"
    errors = inspect(tmp_path, "t.csv", content).errors
    assert errors == [
        {"line": 3, "message": "expected 2 fields (text,label), got 1"},
        {"line": 4, "message": "expected 2 fields (text,label), got 3"},
        {"line": 5, "message": "'text' is empty"},
    ]


def test_errors_are_capped_but_all_rows_are_checked(tmp_path: Path) -> None:
    content = jsonl(*[{"text": "", "label": "x"}] * 30, {"text": "ok", "label": "x"})
    report = inspect_file(write(tmp_path, "t.jsonl", content), "t.jsonl", max_errors=5)
    assert [e["line"] for e in report.errors] == [1, 2, 3, 4, 5]
    assert report.stats["rows"] == 1
    assert report.status_details is not None
    assert report.status_details == "line 1: 'text' is empty (and 29 more problems)"


def test_read_examples_raises_with_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", jsonl({"text": "a", "label": "x"}) + "oops\n" + "{}\n")
    with pytest.raises(DatasetError) as caught:
        read_examples(path, "t.jsonl")
    assert [e["line"] for e in caught.value.errors] == [2, 3]
    assert str(caught.value).startswith("line 2: invalid JSON")
    assert str(caught.value).endswith("(and 1 more problem)")


def test_read_examples_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"^the file has no rows$"):
        read_examples(write(tmp_path, "t.csv", ""), "t.csv")


# ---- a task's own kind of file ----


@dataclass
class ZipKind:
    """A stand-in for a task whose uploads are archives (image classification, say)."""

    name: str = "archive"

    def claims(self, path: Path, filename: str) -> bool:
        return filename.endswith(".zip")

    def inspect(
        self,
        path: Path,
        filename: str,
        max_errors: int,
        min_examples: int,
        settings: Any = None,
    ) -> FileReport:
        return FileReport("archive", {"rows": 2}, [], True, None)

    def read(self, path: Path, filename: str) -> tuple[str, list[dict[str, Any]]]:
        return "archive", [{"file": "a.png"}, {"file": "b.png"}]

    def recheck(self, path: Path, settings: Any = None) -> None:
        return None


def test_a_task_file_kind_reads_its_own_uploads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = replace(task_plugins.TASKS[0], file_kinds=(ZipKind(),))
    monkeypatch.setattr(task_plugins, "TASKS", (task, *task_plugins.TASKS[1:]))
    archive = write(tmp_path, "images.zip", b"PK\x03\x04")
    assert inspect_file(archive, "images.zip").format == "archive"
    assert read_examples(archive, "images.zip") == (
        "archive",
        [{"file": "a.png"}, {"file": "b.png"}],
    )
    # everything else is still read as rows
    assert (
        inspect(tmp_path, "t.jsonl", jsonl({"text": "a", "label": "x"})).format == "classification"
    )
