"""Next tokens for a batch whose rows each have their own sampling settings.

The logits processors of transformers' `generate` (repetition penalty, temperature, top-k,
top-p, in that order) take one setting for the whole batch; here every setting is a
per-row tensor, so one step serves rows with different settings without splitting the
batch. Greedy rows take the argmax; sampled rows draw from their own `torch.Generator`,
seeded by the request's seed, so a seeded request gives the same text whatever else shares
its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from domainlm.engine.generation import Sampling


class RowRandom:
    """A row's random source: its request's seed, or a fresh one."""

    def __init__(self, sampling: Sampling, device: torch.device):
        self.generator = torch.Generator(device=device)
        if sampling.seed is not None:
            self.generator.manual_seed(sampling.seed)
        else:
            self.generator.seed()


def penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """transformers' repetition penalty on one row, in place: the logits of tokens already
    in the prompt or reply are divided by `penalty` (multiplied when negative)."""
    scores = logits.index_select(0, seen)
    logits.index_copy_(0, seen, torch.where(scores < 0, scores * penalty, scores / penalty))


def next_tokens(
    logits: torch.Tensor,
    settings: Sequence[Sampling],
    randoms: Sequence[RowRandom | None],
    seen: Sequence[torch.Tensor | None],
) -> list[int]:
    """One token per row of `logits` (rows, vocab), row i sampled as `settings[i]` says.

    `seen[i]` holds the token ids the repetition penalty applies to (None when the row has
    no penalty); `randoms[i]` is the row's random source (None for greedy rows).
    """
    logits = logits.float()
    for row, sampling in enumerate(settings):
        if sampling.repetition_penalty != 1.0 and seen[row] is not None:
            penalise(logits[row], seen[row], sampling.repetition_penalty)  # type: ignore[arg-type]
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, s in enumerate(settings) if not s.greedy]
    if not sampled:
        return chosen.tolist()
    index = torch.tensor(sampled, device=logits.device)
    part = logits.index_select(0, index)
    temperature = torch.tensor([settings[i].temperature for i in sampled], device=logits.device)
    part = part / temperature.unsqueeze(1)
    ordered, order = part.sort(dim=-1, descending=True)
    top_k = torch.tensor([settings[i].top_k for i in sampled], device=logits.device)
    top_p = torch.tensor([settings[i].top_p for i in sampled], device=logits.device)
    ranks = torch.arange(part.shape[-1], device=logits.device).unsqueeze(0)
    # top-k: the k most likely tokens, and any tied with the k-th (as transformers keeps).
    kth = ordered.gather(1, (top_k.clamp(min=1) - 1).unsqueeze(1))
    drop = (top_k.unsqueeze(1) > 0) & (ordered < kth)
    ordered = ordered.masked_fill(drop, float("-inf"))
    probs = ordered.softmax(dim=-1)
    # top-p: keep the most likely tokens until their mass reaches p (at least one); rows
    # with p = 1 keep everything (a float sum can fall short of 1).
    before = probs.cumsum(dim=-1) - probs
    drop = (before >= top_p.unsqueeze(1)) & (ranks > 0) & (top_p.unsqueeze(1) < 1.0)
    probs = probs.masked_fill(drop, 0.0)
    for j, row in enumerate(sampled):
        random = randoms[row]
        generator = random.generator if random is not None else None
        pick = torch.multinomial(probs[j], 1, generator=generator)
        chosen[row] = order[j, pick[0]]
    return chosen.tolist()
