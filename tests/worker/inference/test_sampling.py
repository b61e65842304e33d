"""Per-row token choice: greedy, temperature, top_k, top_p, each row with its own generator."""

from __future__ import annotations

import math

import torch

from worker.inference.predictors import GenerationOptions
from worker.inference.sampling import RowSampling, next_tokens, row_sampling


def seeded(
    seed: int, temperature: float, top_p: float = 1.0, top_k: int | None = None
) -> RowSampling:
    options = GenerationOptions(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    return row_sampling(options, 0)


def test_greedy_rows_take_the_argmax_next_to_sampled_rows() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    rows = [RowSampling(0.0), seeded(1, temperature=1.0), RowSampling(0.0)]
    chosen = next_tokens(logits, rows)
    assert chosen[0] == 1 and chosen[2] == 2


def test_a_row_draws_the_same_tokens_whatever_shares_its_batch() -> None:
    vocab = torch.randn(50, generator=torch.Generator().manual_seed(0))
    alone_row = seeded(7, temperature=1.3, top_p=0.9)
    alone = [next_tokens(vocab.unsqueeze(0), [alone_row])[0] for _ in range(30)]
    row = seeded(7, temperature=1.3, top_p=0.9)
    others = [seeded(8, temperature=0.5), RowSampling(0.0), seeded(9, temperature=2.0, top_k=3)]
    together = []
    for step in range(30):
        noise = torch.randn(3, 50, generator=torch.Generator().manual_seed(step))
        logits = torch.cat([noise[:1], vocab.unsqueeze(0), noise[1:]])
        together.append(next_tokens(logits, [others[0], row, *others[1:]])[1])
    assert together == alone
    assert len(set(alone)) > 3  # it did sample


def test_rows_of_one_request_get_different_streams() -> None:
    options = GenerationOptions(temperature=1.0, seed=3)
    first, second = row_sampling(options, 0), row_sampling(options, 1)
    assert first.generator is not None and second.generator is not None
    assert torch.rand(4, generator=first.generator).tolist() != (
        torch.rand(4, generator=second.generator).tolist()
    )
    assert row_sampling(GenerationOptions(temperature=0), 0).generator is None


def test_top_k_and_top_p_keep_only_the_best_tokens() -> None:
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    for seed in range(200):
        assert next_tokens(logits, [seeded(seed, temperature=1.0, top_k=1)]) == [0]
        # 0.5 + 0.3 reach 0.8: the two best stay, the rest never come up
        assert next_tokens(logits, [seeded(seed, temperature=1.0, top_p=0.8)])[0] in (0, 1)
        assert next_tokens(logits, [seeded(seed, temperature=1.0, top_k=3)])[0] in (0, 1, 2)


def test_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = 0.25, 0.75
    counts = [0, 0]
    row = seeded(11, temperature=1.0)
    for _ in range(4000):
        counts[next_tokens(logits, [row])[0]] += 1
    assert abs(counts[1] / 4000 - 0.75) < 0.03
    # a low temperature sharpens it: 3^(1/0.25) = 81 to 1
    sharp = seeded(12, temperature=0.25)
    picks = [next_tokens(logits, [sharp])[0] for _ in range(1000)]
    assert picks.count(1) > 960


def test_global_randomness_is_untouched() -> None:
    logits = torch.randn(2, 10)
    state = torch.random.get_rng_state()
    next_tokens(logits, [seeded(1, temperature=1.0), seeded(2, temperature=0.7)])
    assert torch.equal(torch.random.get_rng_state(), state)
