"""Log-likelihood of continuations, batched, with a shared prompt prefix computed once.

Tokenised as lm-evaluation-harness does, so the scores match it item for item: trailing
spaces of the context move to the continuation, the continuation's tokens are those of
`context + continuation` past the context's own tokens, no special tokens are added.

Cost: a job whose continuations are all one token (exam letters) is one row read at its
last position, where lm-evaluation-harness runs one request per option (it can merge them
only with its logits cache); rows are grouped by model, sorted by length and batched; in
a batch whose rows share a long prefix (C-Eval's header and few-shot examples) the prefix
runs once and its KV cache is repeated for the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: A shared prefix shorter than this is not worth its own forward pass.
MIN_PREFIX = 32


@dataclass
class _Row:
    job: int
    model: str
    tokens: list[int]  # what the model reads
    # (option, first position whose logits predict the option's tokens, the tokens)
    targets: list[tuple[int, int, list[int]]]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _rows(tokenizer: Any, index: int, job: Any) -> list[_Row]:
    context = job.context
    spaces = len(context) - len(context.rstrip())
    pairs = []
    for option, continuation in enumerate(job.continuations):
        ctx, cont = context, continuation
        if spaces:
            ctx, cont = context[:-spaces], context[-spaces:] + continuation
        context_ids = _encode(tokenizer, ctx)
        whole = _encode(tokenizer, ctx + cont)
        pairs.append((option, context_ids, whole[len(context_ids) :] or whole[-1:]))
    first = pairs[0][1]
    if all(len(cont) == 1 and ctx == first for _, ctx, cont in pairs):
        # One row for every option: the logits after the context.
        targets = [(option, len(first) - 1, cont) for option, _, cont in pairs]
        return [_Row(index, job.model, first, targets)]
    return [
        _Row(index, job.model, (ctx + cont)[:-1], [(option, len(ctx) - 1, cont)])
        for option, ctx, cont in pairs
    ]


def score_choices(pool: Any, jobs: list[Any], batch_rows: int = 16) -> list[list[float]]:
    """Per job, the summed log-probability of each continuation after its context."""
    tokenizer = pool.base.tokenizer
    rows = [row for index, job in enumerate(jobs) for row in _rows(tokenizer, index, job)]
    scores = [[0.0] * len(job.continuations) for job in jobs]
    rows.sort(key=lambda r: (r.model, -len(r.tokens)))
    batch: list[_Row] = []
    for row in rows:
        if batch and (len(batch) == batch_rows or row.model != batch[0].model):
            _score_batch(pool, batch, scores)
            batch = []
        batch.append(row)
    if batch:
        _score_batch(pool, batch, scores)
    return scores


def _common_prefix(rows: list[_Row]) -> int:
    shortest = min(len(r.tokens) for r in rows)
    first = rows[0].tokens
    size = 0
    while size < shortest - 1 and all(r.tokens[size] == first[size] for r in rows):
        size += 1
    return size  # at least one token of each row is left to run after the prefix


@torch.no_grad()
def _score_batch(pool: Any, batch: list[_Row], scores: list[list[float]]) -> None:
    from domainlm.engine.adapters import BASE

    model = pool.model
    device = next(model.parameters()).device
    expert = BASE if batch[0].model == "base" else batch[0].model
    pad = pool.base.tokenizer.pad_token_id or 0
    prefix = _common_prefix(batch)
    if prefix < MIN_PREFIX:
        prefix = 0
    width = max(len(r.tokens) for r in batch) - prefix
    ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(batch), prefix + width), dtype=torch.long, device=device)
    for i, row in enumerate(batch):
        rest = row.tokens[prefix:]
        ids[i, : len(rest)] = torch.tensor(rest, device=device)
        mask[i, : prefix + len(rest)] = 1  # right-padded: the padding comes after
    with pool.batched([expert] * len(batch)) as batched:
        kwargs: dict[str, Any] = {}
        if not batched and pool.peft_names([expert]) is not None:
            kwargs["adapter_names"] = pool.peft_names([expert] * len(batch))
        if prefix:
            head = torch.tensor([batch[0].tokens[:prefix]], device=device)
            one = dict(kwargs)
            if "adapter_names" in one:
                one["adapter_names"] = one["adapter_names"][:1]
            # Every row of the batch is on one expert, so the batched LoRA set for the
            # batch serves a one-row pass as well.
            cache = model(input_ids=head, use_cache=True, **one).past_key_values
            cache.batch_repeat_interleave(len(batch))
            kwargs["past_key_values"] = cache
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits  # (rows, width, vocab)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    for i, row in enumerate(batch):
        for option, start, tokens in row.targets:
            positions = torch.arange(start - prefix, start - prefix + len(tokens), device=device)
            picked = logprobs[i, positions, torch.tensor(tokens, device=device)]
            scores[row.job][option] = float(picked.sum())
