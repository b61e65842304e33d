"""The rule every string from a user keeps: no NUL, no unpaired surrogate, a bounded length.

Postgres refuses NUL in text, and neither psycopg nor sqlite3 can encode an unpaired UTF-16
surrogate (which `json.loads` makes from an escape such as `"\\ud800"`), so such a string
that reached a query was a 500; one stored in a JSON column made every later read of its row
a 500. The API checks requests with it at the edge (app/edge.py); the file validator checks
each row of an upload with it.

Plain Python on purpose: the trainer imports the file validator, which imports this.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The longest string a request may carry. The longest legitimate one is a prompt: the API
# accepts max_seq_length up to 32,768 tokens, about 131,072 characters at OpenAI's 4
# characters per token, and this is twice that. Ids, names and hyperparameters have their
# own, much tighter limits (a 400 naming them), and files are not strings of a request.
MAX_STRING_CHARS = 262_144

# keys and list indexes from the body's root to a string
Path = tuple[str | int, ...]
# a surrogate code point left in a str is unpaired: json.loads joins a valid pair into one
# character, and a strict UTF-8 decoder never yields one
_BAD = re.compile("[\x00\ud800-\udfff]")


def string_problem(text: str, max_chars: int | None = MAX_STRING_CHARS) -> str | None:
    """What is wrong with one string, worded to follow its name ("... holds a NUL ..."), or
    None when nothing is."""
    if max_chars is not None and len(text) > max_chars:
        return f"is {len(text)} characters long, over the limit of {max_chars}: shorten it"
    # the common cases first, at C speed: CPython knows whether a str is ASCII without
    # looking, and an encoder finds a surrogate ten times faster than the regex below
    if "\x00" not in text:
        if text.isascii():
            return None
        try:
            text.encode("utf-8")
            return None
        except UnicodeEncodeError:
            pass
    found = _BAD.search(text)
    if found is None:
        return None
    at = found.start()
    if found.group() == "\x00":
        return f"holds a NUL character (\\u0000) at position {at}: remove it"
    return (
        f"holds an unpaired surrogate (\\u{ord(found.group()):04x}) at position {at}: send "
        "valid Unicode (in JSON, a character beyond U+FFFF is a pair of escapes, high "
        "\\ud800-\\udbff then low \\udc00-\\udfff, or plain UTF-8)"
    )


@dataclass(frozen=True)
class BadString:
    """Where a bad string is: the keys and indexes leading to it (a bad key's path ends with
    the key itself), and what is wrong with it."""

    path: Path
    is_key: bool
    problem: str

    def param(self) -> str | None:
        """The dotted path, as error params name fields (`messages.0.content`); a bad key
        is written with its bad characters escaped and cut to 64 characters."""
        return ".".join(escaped(str(part)) for part in self.path) or None

    def message(self, param: str | None, whole: str = "the request body") -> str:
        if self.is_key:
            return f"The key {param} {self.problem}."
        return f"{param or whole} {self.problem}."


def escaped(text: str, most: int = 64) -> str:
    """A string safe to quote in an error: NUL and surrogates as escapes, cut to `most`."""
    text = _BAD.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    return text if len(text) <= most else text[:most] + "..."


def find_bad_string(value: Any, max_chars: int | None = MAX_STRING_CHARS) -> BadString | None:
    """The first bad string in a parsed JSON value (see `walk_strings` for the order)."""
    if not _holds_bad_string(value, max_chars):
        return None
    for path, is_key, text in walk_strings(value):
        problem = string_problem(text, max_chars)
        if problem is not None:
            return BadString(path, is_key, problem)
    return None


def _holds_bad_string(value: Any, max_chars: int | None) -> bool:
    """Whether `find_bad_string` finds anything, without the paths (the common answer is no,
    and building a path per node costs more than checking its string)."""
    most = max_chars if max_chars is not None else -1
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _suspect(node, most) and string_problem(node, max_chars) is not None:
                return True
        elif isinstance(node, dict):
            for key, item in node.items():
                suspect = isinstance(key, str) and _suspect(key, most)
                if suspect and string_problem(key, max_chars) is not None:
                    return True
                stack.append(item)
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _suspect(text: str, most: int) -> bool:
    """A cheap first look: plain ASCII text of an allowed length without NUL is fine."""
    return "\x00" in text or 0 <= most < len(text) or not text.isascii()


def walk_strings(value: Any) -> Iterator[tuple[Path, bool, str]]:
    """Every string in a parsed JSON value as (path, is_key, text), depth first, an object's
    keys before its values.

    Iterative: a body nested as deep as the JSON parser allows must not overflow the stack.
    """
    stack: list[tuple[Path, Any]] = [((), value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            yield path, False, node
        elif isinstance(node, dict):
            for key in node:
                if isinstance(key, str):
                    yield (*path, key), True, key
            stack.extend(((*path, key), item) for key, item in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend(((*path, index), item) for index, item in reversed(list(enumerate(node))))
