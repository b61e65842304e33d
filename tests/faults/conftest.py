"""Fixtures of the fault tests (helpers are in tests/support/faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data import sentiment_rows, write_jsonl


@pytest.fixture
def training_file(tmp_path: Path) -> Path:
    """200 labelled rows: 25 steps an epoch in batches of 8 (180 train, 20 validation)."""
    return write_jsonl(tmp_path / "train.jsonl", sentiment_rows(200, seed=5))
