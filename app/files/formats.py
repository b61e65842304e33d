"""Dataset files: detect the format of an upload, validate every row, read rows for training.

Torch-free on purpose: the API imports this to check uploads, the trainer to read them.
Files are streamed line by line (a file may be gigabytes, a line megabytes), and every
problem is reported with the file's real line number so a user can fix it in an editor.
The formats themselves (their keys, their row checks) belong to the task packages
(task_plugins/*/formats.py); this module reads any of them.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import task_plugins
from app.strings import find_bad_string
from task_plugins.base import RowFormat
from task_plugins.rows import json_type

if TYPE_CHECKING:
    from app.settings import Settings

MAX_ERRORS = 20
# Examples estimated longer than this many tokens are reported: it is the default
# max_seq_length of a job (app/jobs/service.py), beyond which training truncates them.
LONG_EXAMPLE_TOKENS = 256
# A rough, tokenizer-free estimate (OpenAI's rule of thumb for English), plus what a format
# adds per row (a few tokens per chat message for the role header and end-of-turn marker).
CHARS_PER_TOKEN = 4
MAX_LONG_LINES = 20
# Python's csv refuses fields over 128 KiB by default; a single row may legitimately be
# megabytes (long documents), so the limit is only ever raised, never lowered.
_CSV_FIELD_LIMIT = 64 * 1024 * 1024
_SNIFF_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"


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

    row_format: RowFormat | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_rows: int = 0
    n_errors: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)
    features: Counter[str] = field(default_factory=Counter)
    max_chars: int = 0
    total_chars: int = 0
    rejected_rows: int = 0
    max_tokens: int = 0
    long_lines: list[int] = field(default_factory=list)
    n_long: int = 0

    @property
    def format(self) -> str | None:
        return self.row_format.name if self.row_format else None

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
    settings: Settings | None = None,
) -> FileReport:
    """Check an upload in one streaming pass: its format, row count, label counts, problems.

    A file with fewer than `min_examples` rows (valid or not) fails as a whole (line 0).
    Rows estimated over `long_example_tokens` tokens are counted in `stats["long_examples"]`.
    A kind of file that is not rows (a task's FileKind) inspects itself, under the limits of
    `settings` (None: this process's TUNERY_* environment).
    """
    kind = _file_kind(path, filename)
    if kind is not None:
        report: FileReport = kind.inspect(path, filename, max_errors, min_examples, settings)
        return report
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
    if scan.row_format is not None and scan.row_format.label_key is not None:
        stats["labels"] = dict(sorted(scan.labels.items()))
    if scan.row_format is not None and scan.row_format.features is not None:
        stats["features"] = dict(sorted(scan.features.items()))
    ok = not scan.errors and scan.n_rows >= 1
    details = None if ok else _summary(scan.errors, scan.n_errors)
    return FileReport(scan.format, stats, scan.errors, ok, details)


def read_examples(path: Path, filename: str) -> tuple[str, list[dict[str, Any]]]:
    """Return (format, rows) for training, each row as its format normalizes it
    (classification labels become strings)."""
    kind = _file_kind(path, filename)
    if kind is not None:
        return kind.read(path, filename)
    scan = _scan(path, filename, max_errors=MAX_ERRORS, keep_rows=True)
    if scan.errors:
        raise DatasetError(scan.errors)
    name = scan.format
    if name is None or not scan.rows:
        raise DatasetError([{"line": 0, "message": "the file has no rows"}])
    return name, scan.rows


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


def estimate_tokens(row: dict[str, Any], row_format: RowFormat) -> int:
    """A tokenizer-free estimate of a valid row's length in tokens."""
    return -(-row_format.chars(row) // CHARS_PER_TOKEN) + row_format.token_overhead(row)


def _file_kinds() -> Iterator[Any]:
    for task in task_plugins.TASKS:
        yield from task.file_kinds


def file_kind_named(name: str | None) -> Any:
    """The FileKind whose format is `name` (an archive format), or None for row formats."""
    return next((kind for kind in _file_kinds() if kind.name == name), None)


def _file_kind(path: Path, filename: str) -> Any:
    return next((kind for kind in _file_kinds() if kind.claims(path, filename)), None)


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
            row_format = scan.row_format
            assert row_format is not None  # a row without problems set the file's format
            chars = row_format.chars(row)
            scan.max_chars = max(scan.max_chars, chars)
            scan.total_chars += chars
            tokens = estimate_tokens(row, row_format)
            scan.max_tokens = max(scan.max_tokens, tokens)
            if tokens > long_example_tokens:
                scan.n_long += 1
                if len(scan.long_lines) < MAX_LONG_LINES:
                    scan.long_lines.append(line)
            if row_format.features is not None:
                scan.features.update(set(row_format.features(row)))
            row = row_format.normalize(row)
            if row_format.label_key is not None:
                scan.labels[row[row_format.label_key]] += 1
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
            scan.row_format = _format_of_keys(set(header))
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
    for jsonl_only in task_plugins.row_formats():
        if not jsonl_only.csv and jsonl_only.keys <= columns:
            return (
                f"the {jsonl_only.name} format ({', '.join(jsonl_only.columns)}) is supported "
                "in JSONL files only, not CSV"
            )
    row_format = _format_of_keys(columns)
    if row_format is None:
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
            hint = "; columns must be separated by commas"
        expected = " or ".join(
            f"'{','.join(f.columns)}'" for f in task_plugins.row_formats() if f.csv
        )
        return f"the CSV header must be {expected}, got '{','.join(header)}'{hint}"
    extra = columns - row_format.keys
    if extra:
        return (
            f"unexpected CSV column(s) {', '.join(sorted(extra))}: a {row_format.name} file has "
            f"exactly the columns {','.join(sorted(row_format.keys))}"
        )
    return None


def _format_of_keys(keys: set[str]) -> RowFormat | None:
    """The one format whose keys are all present (extra keys are reported by the row check)."""
    matches = [f for f in task_plugins.row_formats() if f.keys <= keys]
    return matches[0] if len(matches) == 1 else None


def _expected_keys() -> str:
    """'{"text", "label"}, {"prompt", "completion"} or {"messages"}'"""
    shown = [
        "{" + ", ".join(f'"{key}"' for key in f.columns) + "}" for f in task_plugins.row_formats()
    ]
    return " or ".join([", ".join(shown[:-1]), shown[-1]]) if len(shown) > 1 else shown[0]


def _check_row(row: Any, scan: _Scan, line: int) -> str | None:
    """Return the first problem of a row, detecting the file's format from its first row."""
    if not isinstance(row, dict):
        return f"each line must be a JSON object with keys {_expected_keys()}, got {json_type(row)}"
    row_format = _format_of_keys(set(row))
    if row_format is None:
        if sum(f.keys <= set(row) for f in task_plugins.row_formats()) > 1:
            return f"the row mixes the keys of several formats; expected {_expected_keys()}"
        keys = ", ".join(sorted(row)) or "none"
        return f"the row's keys ({keys}) match no format; expected {_expected_keys()}"
    if scan.row_format is None:
        scan.row_format = row_format
    elif row_format.name != scan.row_format.name:
        return (
            f"this row is in the {row_format.name} format but the file is {scan.format} "
            "(from its first row)"
        )
    extra = set(row) - row_format.keys - row_format.optional_keys
    if extra and row_format.extra_keys_problem is not None:
        problem = row_format.extra_keys_problem(extra)
        if problem:
            return problem
    if extra:
        allowed = ", ".join(sorted(row_format.keys))
        optional = ", ".join(sorted(row_format.optional_keys))
        return (
            f"unexpected key(s) {', '.join(sorted(extra))}: a {row_format.name} row has "
            f"exactly {allowed}" + (f" (and optionally {optional})" if optional else "")
        )
    return row_format.check(row)


def _summary(errors: list[dict[str, Any]], total: int | None = None) -> str:
    """The first problem and how many more, e.g. "line 3: 'text' is empty (and 2 more problems)".

    No final period: the API embeds it in longer messages.
    """
    first = errors[0]
    where = "" if first["line"] == 0 else f"line {first['line']}: "
    more = (total if total is not None else len(errors)) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}{first['message']}{suffix}"
