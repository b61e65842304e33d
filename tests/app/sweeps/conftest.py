from __future__ import annotations

import pytest

from tests.app.conftest import Api, upload_text
from tests.app.sweeps.test_sweeps_api import CLASSIFY


@pytest.fixture
def file_id(api: Api) -> str:
    """A 20-row classification upload (no validation file: 18 rows train)."""
    return str(upload_text(api, "train.jsonl", CLASSIFY)["id"])
