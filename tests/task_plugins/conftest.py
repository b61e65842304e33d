"""The tiny models of the trainer tests, for the task packages' own tests."""

from tests.worker.training.conftest import tiny_bert, tiny_gpt2, tiny_llama  # noqa: F401
