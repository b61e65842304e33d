"""The inference tests' tiny models and artifacts, reused."""

from tests.worker.inference.conftest import bert_dir, llama_dir, models_root, store

__all__ = ["bert_dir", "llama_dir", "models_root", "store"]
