from tests.app.openai_compat.sdk import sdk

__all__ = ["sdk"]  # the openai SDK fixture, for test_files_sdk.py
