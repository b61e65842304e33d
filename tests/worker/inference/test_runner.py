"""The KV-cache batch: rows join and leave a running cache and decode as they would alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from worker.inference.runner import KVBatch, decode, join, keep, prefill

CPU = torch.device("cpu")


def close(got: torch.Tensor, expected: torch.Tensor) -> None:
    # what batch shapes change in float32 on the CPU: the last bits, never a greedy choice here
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def model(llama_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir).eval()


@pytest.fixture(scope="module")
def rows(llama_dir: Path) -> dict[str, list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    texts = {"short": "hi", "long": "question: what is the capital of france? answer:"}
    return {name: tokenizer(text)["input_ids"] for name, text in texts.items()}


def alone(model: Any, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """The logits of each step of one row decoding greedily by itself."""
    batch, logits = prefill(model, [prompt], 3, CPU)
    seen = [logits[0]]
    for _ in range(steps):
        logits = decode(model, batch, [int(logits[0].argmax())])
        seen.append(logits[0])
    return seen


def test_rows_join_and_leave_a_running_batch_and_decode_as_alone(
    model: Any, rows: dict[str, list[int]]
) -> None:
    short, long = rows["short"], rows["long"]
    expected_short, expected_long = alone(model, short, 8), alone(model, long, 12)

    running, logits = prefill(model, [long], 3, CPU)
    for step in range(3):  # the long row is 3 tokens in when the short one comes
        logits = decode(model, running, [int(logits[0].argmax())])
        close(logits[0], expected_long[step + 1])
    joining, first = prefill(model, [short], 3, CPU)
    batch = join(running, joining)
    assert batch.lengths == [len(long) + 3, len(short)] and batch.width == len(long) + 3
    assert batch.mask[1].sum() == len(short) and batch.mask[1, -len(short) :].all()

    last = torch.stack([logits[0], first[0]])
    for step in range(5):
        last = decode(model, batch, last.argmax(-1).tolist())
        close(last[0], expected_long[step + 4])
        close(last[1], expected_short[step + 1])

    # the long row leaves: the columns only its tokens filled go with it
    only_short = keep(batch, [1])
    assert only_short.width == len(short) + 5 == only_short.lengths[0]
    assert only_short.mask.all()
    logits = last[1:]
    for step in range(2):
        logits = decode(model, only_short, [int(logits[0].argmax())])
        close(logits[0], expected_short[step + 6])


def test_keep_selects_rows_in_the_order_given(model: Any, rows: dict[str, list[int]]) -> None:
    batch, _ = prefill(model, [rows["long"], rows["short"], rows["short"]], 3, CPU)
    kept: KVBatch = keep(batch, [2, 0])
    assert kept.lengths == [len(rows["short"]), len(rows["long"])]
    ((keys, _), *_) = kept.layers
    ((all_keys, _), *_) = batch.layers
    torch.testing.assert_close(keys[1], all_keys[0])
    torch.testing.assert_close(keys[0], all_keys[2])
