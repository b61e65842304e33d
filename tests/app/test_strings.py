"""The string rule itself (app/strings.py): what it refuses, and how it names the place."""

from __future__ import annotations

import json

import pytest

from app.strings import MAX_STRING_CHARS, find_bad_string, string_problem


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a\x00b", "NUL character (\\u0000) at position 1"),
        ("\ud800x", "unpaired surrogate (\\ud800) at position 0"),
        ("x\udfff", "unpaired surrogate (\\udfff) at position 1"),
        ("\udc00\ud800", "unpaired surrogate (\\udc00) at position 0"),  # a pair the wrong way
        ("x" * (MAX_STRING_CHARS + 1), f"over the limit of {MAX_STRING_CHARS}"),
    ],
)
def test_a_bad_string_is_named_with_what_to_change(text: str, words: str) -> None:
    problem = string_problem(text)
    assert problem is not None and words in problem


@pytest.mark.parametrize(
    "text",
    ["", "plain", "é ü ß 中文 ☃", "\U0001f600 emoji", "tab\tnewline\n\x07", "x" * MAX_STRING_CHARS],
)
def test_good_strings_pass(text: str) -> None:
    assert string_problem(text) is None


def test_json_escapes_of_a_pair_are_one_character_and_pass() -> None:
    parsed = json.loads('"\\ud83d\\ude00"')
    assert parsed == "\U0001f600" and string_problem(parsed) is None
    assert string_problem(json.loads('"\\ud83d"')) is not None


def test_the_length_limit_is_optional() -> None:
    assert string_problem("x" * (MAX_STRING_CHARS + 1), max_chars=None) is None


def test_find_names_the_path_to_a_value_or_a_key() -> None:
    body = {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "a\x00"}]}
    found = find_bad_string(body)
    assert found is not None and not found.is_key
    assert found.param() == "messages.1.content"
    assert found.message(found.param()).startswith("messages.1.content holds a NUL")

    found = find_bad_string({"metadata": {"ok": "1", "k\ud800": "v"}})
    assert found is not None and found.is_key
    assert found.param() == "metadata.k\\ud800"  # escaped: the param is sent back as JSON
    assert found.message(found.param()).startswith("The key metadata.k\\ud800 holds")

    found = find_bad_string("\x00")
    assert found is not None and found.param() is None
    assert found.message(None).startswith("the request body holds")


def test_find_returns_none_for_clean_values_of_every_json_type() -> None:
    assert find_bad_string({"a": [1, 2.5, True, None, {"b": "c"}], "": ""}) is None


def test_find_walks_deep_nesting_without_recursion() -> None:
    deep: object = "a\x00"
    for _ in range(50_000):
        deep = [deep]
    found = find_bad_string(deep)
    assert found is not None and len(found.path) == 50_000
