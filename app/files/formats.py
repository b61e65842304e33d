"""Dataset files: detect the format of an upload, validate every row, read rows for training.

Torch-free on purpose: the API imports this to check uploads, the trainer to read them.
Files are streamed line by line (a file may be gigabytes, a line megabytes), and every
problem is reported with the file's real line number so a user can fix it in an editor.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from app.strings import find_bad_string

CLASSIFICATION = "classification"
PROMPT_COMPLETION = "prompt-completion"
CHAT = "chat"

# The exact keys (JSONL) or header columns (CSV) of each format.
FORMAT_KEYS: dict[str, frozenset[str]] = {
    CLASSIFICATION: frozenset({"text", "label"}),
    PROMPT_COMPLETION: frozenset({"prompt", "completion"}),
    CHAT: frozenset({"messages"}),
}
FORMATS_BY_TASK: dict[str, set[str]] = {
    "classification": {CLASSIFICATION},
    "causal-lm": {PROMPT_COMPLETION, CHAT},
}
CHAT_ROLES = ("system", "user", "assistant")
# The keys OpenAI documents for a chat training message. `name` is accepted and not trained
# on; `weight` (assistant messages only) says whether to learn from that message.
CHAT_MESSAGE_KEYS = ("role", "content", "name", "weight")
# What OpenAI's format has for tool calling, which Tunery does not train.
_TOOL_ROLES = ("tool", "function")
_TOOL_MESSAGE_KEYS = frozenset({"tool_calls", "function_call", "tool_call_id"})
_TOOL_ROW_KEYS = frozenset({"tools", "functions", "parallel_tool_calls"})
_TOOLS_UNSUPPORTED = (
    "tool and function calling is not supported: Tunery fine-tunes on the text of system, "
    "user and assistant messages"
)
MAX_ERRORS = 20
# Examples estimated longer than this many tokens are reported: it is the default
# max_seq_length of a job (app/jobs/service.py), beyond which training truncates them.
LONG_EXAMPLE_TOKENS = 256
# A rough, tokenizer-free estimate (OpenAI's rule of thumb for English), plus a few tokens
# per chat message for the role header and end-of-turn marker.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
MAX_LONG_LINES = 20
# Python's csv refuses fields over 128 KiB by default; a single row may legitimately be
# megabytes (long documents), so the limit is only ever raised, never lowered.
_CSV_FIELD_LIMIT = 64 * 1024 * 1024
_SNIFF_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_EXPECTED_KEYS = '{"text", "label"}, {"prompt", "completion"} or {"messages"}'


class DatasetError(Exception):
    """A dataset file has problems; `errors` lists them as {"line": N, "message": str}.

    Line 0 stands for the file as a whole (an empty file).
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(_summary(errors) if errors else "invalid dataset")


@dataclass
class FileReport:
    format: str | None
    stats: dict[str, Any]
    errors: list[dict[str, Any]]
    ok: bool
    status_details: str | None


@dataclass
class _Scan:
    """What one pass over a file found."""

    format: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_rows: int = 0
    n_errors: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)
    max_chars: int = 0
    total_chars: int = 0
    rejected_rows: int = 0
    max_tokens: int = 0
    long_lines: list[int] = field(default_factory=list)
    n_long: int = 0

    def error(self, line: int, message: str, max_errors: int) -> None:
        self.n_errors += 1
        if len(self.errors) < max_errors:
            self.errors.append({"line": line, "message": message})


def inspect_file(
    path: Path,
    filename: str,
    max_errors: int = MAX_ERRORS,
    *,
    min_examples: int = 1,
    long_example_tokens: int = LONG_EXAMPLE_TOKENS,
) -> FileReport:
    """Check an upload in one streaming pass: its format, row count, label counts, problems.

    A file with fewer than `min_examples` rows (valid or not) fails as a whole (line 0).
    Rows estimated over `long_example_tokens` tokens are counted in `stats["long_examples"]`.
    """
    scan = _scan(
        path,
        filename,
        max_errors=max_errors,
        keep_rows=False,
        long_example_tokens=long_example_tokens,
    )
    examples = scan.n_rows + scan.rejected_rows
    if 0 < examples < min_examples:
        scan.n_errors += 1
        scan.errors.insert(
            0,
            {
                "line": 0,
                "message": f"the file has {examples} example{'s' if examples > 1 else ''}; "
                f"fine-tuning needs at least {min_examples}: add examples",
            },
        )
        del scan.errors[max_errors:]
    stats: dict[str, Any] = {
        "rows": scan.n_rows,
        "max_chars": scan.max_chars,
        "total_chars": scan.total_chars,
        "max_tokens_estimate": scan.max_tokens,
        "long_examples": {
            "count": scan.n_long,
            "threshold_tokens": long_example_tokens,
            "lines": scan.long_lines,
        },
    }
    if scan.format == CLASSIFICATION:
        stats["labels"] = dict(sorted(scan.labels.items()))
    ok = not scan.errors and scan.n_rows >= 1
    details = None if ok else _summary(scan.errors, scan.n_errors)
    return FileReport(scan.format, stats, scan.errors, ok, details)


def read_examples(path: Path, filename: str) -> tuple[str, list[dict[str, Any]]]:
    """Return (format, rows) for training; classification labels become strings."""
    scan = _scan(path, filename, max_errors=MAX_ERRORS, keep_rows=True)
    if scan.errors:
        raise DatasetError(scan.errors)
    if scan.format is None or not scan.rows:
        raise DatasetError([{"line": 0, "message": "the file has no rows"}])
    return scan.format, scan.rows


def long_examples_warning(stats: dict[str, Any]) -> str | None:
    """One line telling the user about over-long examples, from inspect_file's stats."""
    long = stats.get("long_examples") or {}
    count = int(long.get("count") or 0)
    if not count:
        return None
    lines = ", ".join(str(line) for line in long.get("lines", []))
    more = ", ..." if count > len(long.get("lines", [])) else ""
    return (
        f"{count} example{'s are' if count > 1 else ' is'} estimated over "
        f"{long.get('threshold_tokens')} tokens (about {CHARS_PER_TOKEN} characters per token; "
        f"line{'s' if count > 1 else ''} {lines}{more}) and will be truncated in training "
        "unless the job sets a larger hyperparameters.max_seq_length"
    )


def estimate_tokens(row: dict[str, Any]) -> int:
    """A tokenizer-free estimate of a valid row's length in tokens."""
    chars = _row_chars(row)
    overhead = TOKENS_PER_MESSAGE * len(row["messages"]) if "messages" in row else 0
    return -(-chars // CHARS_PER_TOKEN) + overhead


def _scan(
    path: Path,
    filename: str,
    *,
    max_errors: int,
    keep_rows: bool,
    long_example_tokens: int = LONG_EXAMPLE_TOKENS,
) -> _Scan:
    scan = _Scan()
    with open(path, "rb") as stream:
        is_jsonl = _is_jsonl(stream, filename)
        stream.seek(0)
        lines = _Lines(stream, scan, max_errors)
        records = (
            _jsonl_records(lines, scan, max_errors)
            if is_jsonl
            else _csv_records(lines, scan, max_errors)
        )
        for line, row in records:
            problem = _bad_text(row) or _check_row(row, scan, line)
            if problem:
                scan.rejected_rows += 1
                scan.error(line, problem, max_errors)
                continue
            scan.n_rows += 1
            chars = _row_chars(row)
            scan.max_chars = max(scan.max_chars, chars)
            scan.total_chars += chars
            tokens = estimate_tokens(row)
            scan.max_tokens = max(scan.max_tokens, tokens)
            if tokens > long_example_tokens:
                scan.n_long += 1
                if len(scan.long_lines) < MAX_LONG_LINES:
                    scan.long_lines.append(line)
            if scan.format == CLASSIFICATION:
                row = {"text": row["text"], "label": str(row["label"])}
                scan.labels[row["label"]] += 1
            elif scan.format == CHAT:
                # what the trainer renders: name is not trained on, weight is always 1 here
                row = {
                    "messages": [
                        {"role": message["role"], "content": message["content"]}
                        for message in row["messages"]
                    ]
                }
            if keep_rows:
                scan.rows.append(row)
    if scan.n_rows == 0 and not scan.errors:
        scan.error(0, "the file has no rows", max_errors)
    return scan


def _is_jsonl(stream: BinaryIO, filename: str) -> bool:
    suffix = Path(filename).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return True
    if suffix == ".csv":
        return False
    # Unknown extension: a JSONL file starts with "{", anything else is read as CSV.
    while chunk := stream.read(_SNIFF_BYTES):
        stripped = chunk.removeprefix(_BOM).lstrip()
        if stripped:
            return stripped.startswith(b"{")
    return False


@dataclass
class _Lines:
    """The decoded lines of a file, with the number of the line last read (1-based).

    A line that is not UTF-8 is reported once here, then decoded with replacement
    characters so that a CSV parser stays in step; the row it belongs to is skipped.
    """

    stream: BinaryIO
    scan: _Scan
    max_errors: int
    number: int = 0
    bad: set[int] = field(default_factory=set)

    def __iter__(self) -> Iterator[str]:
        for raw in self.stream:
            self.number += 1
            if self.number == 1:
                raw = raw.removeprefix(_BOM)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.bad.add(self.number)
                self.scan.error(
                    self.number,
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start + 1} "
                    "of the line); save the file with UTF-8 encoding",
                    self.max_errors,
                )
                yield raw.decode("utf-8", "replace")

    def any_bad(self, first: int, last: int) -> bool:
        return any(number in self.bad for number in range(first, last + 1))


def _jsonl_records(lines: _Lines, scan: _Scan, max_errors: int) -> Iterator[tuple[int, Any]]:
    for text in lines:
        stripped = text.strip()
        if not stripped:
            continue
        if lines.number in lines.bad:
            continue
        try:
            yield lines.number, json.loads(stripped)
        except json.JSONDecodeError as exc:
            hint = ""
            if stripped.startswith("[") and lines.number == 1:
                hint = "; a JSON array is not supported: write one JSON object per line (JSONL)"
            scan.error(
                lines.number, f"invalid JSON: {exc.msg} at column {exc.colno}{hint}", max_errors
            )
        except (ValueError, RecursionError) as exc:
            # e.g. an integer of thousands of digits, or arrays nested thousands deep
            scan.error(lines.number, f"invalid JSON: {exc}", max_errors)


def _csv_records(lines: _Lines, scan: _Scan, max_errors: int) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.reader(lines)
    header: list[str] | None = None
    while True:
        start = lines.number + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The parser cannot resynchronise after a syntax error (e.g. an unclosed quote).
            scan.error(start, f"CSV syntax error: {exc}; stopped reading the file here", max_errors)
            return
        if not record or (header is None and not any(cell.strip() for cell in record)):
            continue  # blank lines, and empty lines before the header
        if lines.any_bad(start, lines.number):
            continue
        if header is None:
            header = [name.strip().lower() for name in record]
            problem = _bad_text(",".join(header), "the CSV header") or _check_header(header)
            if problem:
                scan.error(start, problem, max_errors)
                return
            scan.format = _format_of_keys(set(header))
            continue
        if len(record) != len(header):
            scan.error(
                start,
                f"expected {len(header)} fields ({','.join(header)}), got {len(record)}",
                max_errors,
            )
            continue
        yield start, dict(zip(header, record, strict=True))


def _bad_text(value: Any, whole: str = "the row") -> str | None:
    """A NUL or an unpaired surrogate anywhere in a row, keys included: text never means
    one, and the database could not store the report that quoted it (app/strings.py)."""
    found = find_bad_string(value, max_chars=None)
    if found is None:
        return None
    return f"{'the key ' if found.is_key else ''}{found.param() or whole} {found.problem}"


def _check_header(header: list[str]) -> str | None:
    columns = set(header)
    if len(columns) != len(header):
        return f"the CSV header repeats a column: {','.join(header)}"
    if "messages" in columns:
        return "the chat format (messages) is supported in JSONL files only, not CSV"
    fmt = _format_of_keys(columns)
    if fmt is None:
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
            hint = "; columns must be separated by commas"
        return (
            f"the CSV header must be 'text,label' or 'prompt,completion', got '{','.join(header)}'"
            f"{hint}"
        )
    extra = columns - FORMAT_KEYS[fmt]
    if extra:
        return (
            f"unexpected CSV column(s) {', '.join(sorted(extra))}: a {fmt} file has exactly "
            f"the columns {','.join(sorted(FORMAT_KEYS[fmt]))}"
        )
    return None


def _format_of_keys(keys: set[str]) -> str | None:
    """The one format whose keys are all present (extra keys are reported by the row check)."""
    matches = [fmt for fmt, required in FORMAT_KEYS.items() if required <= keys]
    return matches[0] if len(matches) == 1 else None


def _check_row(row: Any, scan: _Scan, line: int) -> str | None:
    """Return the first problem of a row, detecting the file's format from its first row."""
    if not isinstance(row, dict):
        return f"each line must be a JSON object with keys {_EXPECTED_KEYS}, got {_json_type(row)}"
    fmt = _format_of_keys(set(row))
    if fmt is None:
        if sum(required <= set(row) for required in FORMAT_KEYS.values()) > 1:
            return f"the row mixes the keys of several formats; expected {_EXPECTED_KEYS}"
        keys = ", ".join(sorted(row)) or "none"
        return f"the row's keys ({keys}) match no format; expected {_EXPECTED_KEYS}"
    if scan.format is None:
        scan.format = fmt
    elif fmt != scan.format:
        return f"this row is in the {fmt} format but the file is {scan.format} (from its first row)"
    extra = set(row) - FORMAT_KEYS[fmt]
    if fmt == CHAT and extra & _TOOL_ROW_KEYS:
        keys = ", ".join(sorted(extra & _TOOL_ROW_KEYS))
        return f"unexpected key(s) {keys}: {_TOOLS_UNSUPPORTED}; remove them"
    if extra:
        allowed = ", ".join(sorted(FORMAT_KEYS[fmt]))
        return f"unexpected key(s) {', '.join(sorted(extra))}: a {fmt} row has exactly {allowed}"
    if fmt == CLASSIFICATION:
        return _check_text(row, "text") or _check_label(row["label"])
    if fmt == PROMPT_COMPLETION:
        return _check_text(row, "prompt") or _check_text(row, "completion")
    return _check_messages(row["messages"])


def _check_text(row: dict[str, Any], key: str) -> str | None:
    value = row[key]
    if not isinstance(value, str):
        return f"'{key}' must be a string, got {_json_type(value)}"
    if not value.strip():
        return f"'{key}' is empty"
    return None


def _check_label(label: Any) -> str | None:
    # bool is an int in Python but true/false is almost always a mistake for a class name.
    if isinstance(label, bool) or not isinstance(label, str | int):
        return f"'label' must be a string or an integer, got {_json_type(label)}"
    if isinstance(label, str) and not label.strip():
        return "'label' is empty"
    return None


def _check_messages(messages: Any) -> str | None:
    """The checks OpenAI documents for a chat example, first problem first."""
    if not isinstance(messages, list) or not messages:
        return f"'messages' must be a non-empty list, got {_json_type(messages)}"
    for index, message in enumerate(messages):
        problem = _check_message(message, f"messages[{index}]")
        if problem:
            return problem
    if not any(message["role"] == "assistant" for message in messages):
        return "'messages' has no assistant message: nothing to learn from"
    return None


def _check_message(message: Any, where: str) -> str | None:
    if not isinstance(message, dict):
        return f"{where} must be an object with 'role' and 'content', got {_json_type(message)}"
    tool_keys = set(message) & _TOOL_MESSAGE_KEYS
    if tool_keys:
        return f"{where} has {', '.join(sorted(tool_keys))}: {_TOOLS_UNSUPPORTED}"
    unknown = set(message) - set(CHAT_MESSAGE_KEYS)
    if unknown:
        return (
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; a message may only have "
            f"{', '.join(CHAT_MESSAGE_KEYS)}"
        )
    for key in ("role", "content"):
        if key not in message:
            return f"{where} has no '{key}'"
    role = message["role"]
    if role in _TOOL_ROLES:
        return f"{where}.role is {role!r}: {_TOOLS_UNSUPPORTED}; remove that message"
    if role not in CHAT_ROLES:
        return f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {role!r}"
    content = message["content"]
    if not isinstance(content, str):
        hint = "; content parts (a list) are not supported" if isinstance(content, list) else ""
        return f"{where}.content must be a string, got {_json_type(content)}{hint}"
    if not content:
        return f"{where}.content is empty"
    if "name" in message and (not isinstance(message["name"], str) or not message["name"]):
        return f"{where}.name must be a non-empty string, got {_json_type(message['name'])}"
    if "weight" in message:
        return _check_weight(message["weight"], role, where)
    return None


def _check_weight(weight: Any, role: str, where: str) -> str | None:
    if role != "assistant":
        return f"{where}.weight is only allowed on assistant messages"
    if isinstance(weight, bool) or weight not in (0, 1):
        return f"{where}.weight must be 0 or 1, got {json.dumps(weight)}"
    if weight == 0:
        # the trainer learns from every assistant message; skipping one is not wired yet
        return (
            f"{where}.weight 0 is not supported yet: every assistant message is trained on; "
            "remove the weight (or the message)"
        )
    return None


def _json_type(value: Any) -> str:
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


def _row_chars(row: dict[str, Any]) -> int:
    if "messages" in row:
        return sum(len(message["content"]) for message in row["messages"])
    return sum(len(value) for key, value in row.items() if key != "label")


def _summary(errors: list[dict[str, Any]], total: int | None = None) -> str:
    """The first problem and how many more, e.g. "line 3: 'text' is empty (and 2 more problems)".

    No final period: the API embeds it in longer messages.
    """
    first = errors[0]
    where = "" if first["line"] == 0 else f"line {first['line']}: "
    more = (total if total is not None else len(errors)) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}{first['message']}{suffix}"
