"""Every setting is documented in docs/deployment.md, with the default the code has."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
ROW = re.compile(r"^\| `(TUNERY_[A-Z_]+)` \| ([^|]+) \|", re.M)


def documented() -> dict[str, str]:
    return {name: default.strip() for name, default in ROW.findall(DOC.read_text())}


def test_every_setting_has_a_row_with_its_default() -> None:
    rows = documented()
    missing = [
        f"TUNERY_{n.upper()}" for n in Settings.model_fields if f"TUNERY_{n.upper()}" not in rows
    ]
    assert missing == [], f"add these to the settings table of docs/deployment.md: {missing}"
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, bool):
            expected = f"`{str(default).lower()}`"
        elif isinstance(default, int | float) or (isinstance(default, str) and default):
            expected = f"`{default}`"
        else:
            continue  # computed (paths, URLs) or unset: said in words
        row = rows[f"TUNERY_{name.upper()}"]
        assert row.startswith(expected), f"TUNERY_{name.upper()}: documented {row}, code {expected}"
