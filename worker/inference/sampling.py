"""Choosing each row's next token from its logits, every row with its own options.

A decode batch mixes requests that decode differently (greedy next to sampled, temperatures,
top_p, top_k), so the choice is made per row here rather than by one generate() call with
one configuration. Sampling draws from the row's own torch.Generator: a seeded request
draws the same numbers whatever else shares its batch, and no request touches torch's
global random state. The draw is an inverse-CDF lookup of one uniform number, so a row
whose logits moved in the last bits (another batch shape on the CPU) still lands on the
same token unless the number falls within that rounding of a boundary.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worker.inference.predictors import GenerationOptions

GOLDEN = 0x9E3779B97F4A7C15  # spreads row indices over the seed space


@dataclass(frozen=True)
class RowSampling:
    temperature: float  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    generator: torch.Generator | None = None  # None for greedy rows

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def row_sampling(options: GenerationOptions, row: int) -> RowSampling:
    """A row's sampling: row `row` of a request seeded s draws from a generator seeded by s
    (row 0) or by s mixed with the row index, so rows of one request differ."""
    if not options.sampled:
        return RowSampling(temperature=0.0)
    seed = secrets.randbits(64) if options.seed is None else (options.seed ^ row * GOLDEN) % 2**64
    generator = torch.Generator().manual_seed(seed)
    return RowSampling(options.temperature, options.top_p, options.top_k or 0, generator)


def next_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """One token per row of logits [rows, vocab]."""
    logits = logits.float()
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if not row.greedy]
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        picked = _sample(logits.index_select(0, index), [rows[i] for i in sampled])
        chosen = chosen.index_copy(0, index, picked)
    return [int(t) for t in chosen.tolist()]


def _sample(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    device = logits.device
    temperature = torch.tensor([r.temperature for r in rows], device=device).unsqueeze(1)
    ordered, order = (logits / temperature).sort(dim=-1, descending=True, stable=True)
    vocab = ordered.shape[-1]
    rank = torch.arange(vocab, device=device).unsqueeze(0)
    top_k = torch.tensor([r.top_k if r.top_k > 0 else vocab for r in rows], device=device)
    ordered = ordered.masked_fill(rank >= top_k.unsqueeze(1), float("-inf"))
    probs = ordered.softmax(dim=-1)
    # top_p keeps the smallest set of best tokens whose probability reaches p: a token stays
    # while the tokens before it hold less than p (so the first one always stays)
    top_p = torch.tensor([r.top_p for r in rows], device=device).unsqueeze(1)
    before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    draws = torch.stack([torch.rand((), generator=r.generator) for r in rows]).to(device)
    target = draws.unsqueeze(1) * cdf[:, -1:]
    position = torch.searchsorted(cdf, target, right=True).clamp(max=vocab - 1)
    # a zero-probability token is never chosen: step back onto the last kept one if the
    # draw landed past it through rounding
    kept = (probs > 0).sum(dim=-1, keepdim=True) - 1
    position = torch.minimum(position, kept)
    return order.gather(1, position).squeeze(1)
