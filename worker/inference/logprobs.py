"""Log probabilities of the chosen tokens and of the most likely alternatives, per row.

They are the model's own distribution (log_softmax of the raw logits), before temperature,
top_p or a grammar shaped the choice, as vLLM reports them by default: the number a bare
forward gives for the same prefix, whatever decoding options the row had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # best first


def row_logprobs(
    logits: torch.Tensor, rows: Sequence[int], tokens: Sequence[int], top: Sequence[int]
) -> list[TokenLogprob]:
    """For each row index in `rows`: the logprob of its chosen token and its top-k."""
    index = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
    logprobs = logits.index_select(0, index).float().log_softmax(dim=-1)
    chosen = torch.tensor([tokens[r] for r in rows], dtype=torch.long, device=logits.device)
    picked = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    k = max(top, default=0)
    best_values: list[list[float]] = [[] for _ in rows]
    best_ids: list[list[int]] = [[] for _ in rows]
    if k > 0:
        values, ids = logprobs.topk(k, dim=-1)
        best_values, best_ids = values.tolist(), ids.tolist()
    return [
        TokenLogprob(
            tokens[r],
            float(picked[i]),
            tuple(zip(best_ids[i][: top[i]], best_values[i][: top[i]], strict=True)),
        )
        for i, r in enumerate(rows)
    ]


def public(entries: Sequence[TokenLogprob], tokenizer: Any) -> list[dict[str, Any]]:
    """OpenAI's chat `logprobs.content` items: token text, logprob, UTF-8 bytes, top_logprobs."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return [
        {**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
        for e in entries
    ]
