"""Preloaded by a test zygote (tests/app/test_zygote.py): stands in for a torch whose import
initialised CUDA, which the zygote must notice. Never imported by the test process itself."""

from __future__ import annotations

import sys
from types import SimpleNamespace

sys.modules.setdefault("torch", SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True)))  # type: ignore[arg-type]
