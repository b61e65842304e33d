"""The suite's own scheduling: the files tests/conftest.py starts first exist (a renamed
file would silently drop back to its place in the collection and could start last)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST

ROOT = Path(__file__).resolve().parents[1]


def test_the_files_started_first_exist_once_each() -> None:
    missing = [path for path in LONGEST_FIRST if not (ROOT / path).is_file()]
    assert missing == [], f"rename them in tests/conftest.py LONGEST_FIRST: {missing}"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
