"""docs/openai-sdk.md's contract tables name, for each OpenAI parameter, the test that holds
Tunery to what the row says: every named test exists, and every row of the fine-tuning
tables names one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "openai-sdk.md"
# `app/files/test_formats.py::test_chat_errors` or `e2e/test_openai_sdk_tools.py`
_REFERENCE = re.compile(r"`([\w/]+\.py)(?:::(\w+))?`")


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_every_named_test_exists() -> None:
    references = _REFERENCE.findall(DOC.read_text())
    assert references
    missing = []
    for path, name in references:
        source = ROOT / "tests" / path.removeprefix("tests/")
        if not source.is_file():
            missing.append(path)
        elif name and not re.search(rf"^def {name}\(", source.read_text(), re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == [], f"docs/openai-sdk.md names tests that do not exist: {missing}"


def test_every_fine_tuning_row_names_its_test() -> None:
    tables = _rows(_section("Fine-tuning data and jobs"))
    headers = [row for row in tables if row[-1] == "tested by"]
    assert len(headers) == 3  # data, files, jobs
    untested = [row[0] for row in tables if row not in headers and not _REFERENCE.search(row[-1])]
    assert untested == [], f"rows without a test: {untested}"
