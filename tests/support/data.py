"""Small datasets the tests upload: separable enough that a few epochs learn them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

POSITIVE = ["great", "wonderful", "excellent", "happy", "loved", "fantastic", "superb", "delight"]
NEGATIVE = ["terrible", "awful", "boring", "sad", "hated", "dreadful", "poor", "disaster"]
SUBJECTS = ["the movie", "this film", "the show", "that book", "the meal", "our trip"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = POSITIVE if label == "positive" else NEGATIVE
        rows.append(
            {
                "text": f"{rng.choice(SUBJECTS)} was {rng.choice(words)} and {rng.choice(words)}",
                "label": label,
            }
        )
    return rows


def qa_rows(n: int) -> list[dict[str, Any]]:
    pairs = [
        ("what is the capital of france?", " paris"),
        ("translate to french: cat", " chat"),
        ("say hello", " hello world"),
        ("count to three", " 1 2 3"),
    ]
    return [{"prompt": f"question: {q} answer:", "completion": a} for q, a in (pairs * n)[:n]]


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "you are happy"},
                {"role": "user", "content": q["prompt"]},
                {"role": "assistant", "content": q["completion"].strip()},
            ]
        }
        for q in qa_rows(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
