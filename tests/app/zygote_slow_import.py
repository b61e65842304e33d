"""Preloaded by a test zygote (tests/app/test_zygote.py): an import that takes long, as torch's
does on a busy machine. Never imported by the test process itself."""

from __future__ import annotations

import time

time.sleep(60)
