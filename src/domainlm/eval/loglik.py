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
    for batch in _batches(rows, batch_rows):
        _score_batch(pool, batch, scores)
    return scores


def _batches(rows: list[_Row], size: int) -> list[list[_Row]]:
    """Batches of one model's rows: rows sharing a prefix of `MIN_PREFIX` tokens or more
    (a few-shot header) together, so the prefix runs once per batch; the rest by length,
    so little of a batch is padding."""
    batches: list[list[_Row]] = []
    for model in sorted({r.model for r in rows}):
        mine = sorted((r for r in rows if r.model == model), key=lambda r: r.tokens)
        groups: list[list[_Row]] = []
        for row in mine:
            if groups and _shared(groups[-1][0].tokens, row.tokens) >= MIN_PREFIX:
                groups[-1].append(row)
            else:
                groups.append([row])
        alone = sorted((g[0] for g in groups if len(g) == 1), key=lambda r: -len(r.tokens))
        for group in [g for g in groups if len(g) > 1] + ([alone] if alone else []):
            group.sort(key=lambda r: -len(r.tokens))
            batches += [group[i : i + size] for i in range(0, len(group), size)]
    return batches


def _shared(a: list[int], b: list[int]) -> int:
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size


def _common_prefix(rows: list[_Row]) -> int:
    """The tokens every row starts with, leaving at least one of each row to run after."""
    shortest = min(len(r.tokens) for r in rows)
    shared = min(_shared(rows[0].tokens, r.tokens) for r in rows)
    return min(shared, shortest - 1)


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
        where = [
            (i, start - prefix + k, token, row.job, option)
            for i, row in enumerate(batch)
            for option, start, tokens in row.targets
            for k, token in enumerate(tokens)
        ]
        rows_at = torch.tensor([w[0] for w in where], device=device)
        cols_at = torch.tensor([w[1] for w in where], device=device)
        if "adapter_names" in kwargs:  # peft's own per-row adapters: its whole forward
            logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits[rows_at, cols_at]
        else:
            # The output layer only where a target token is read: (targets, vocab), not
            # (rows, width, vocab) at every position (3 GB in fp32 for 16 rows of 1,000
            # tokens and a 49k vocabulary).
            body = _body(model)(input_ids=ids, attention_mask=mask, **kwargs)
            logits = _head(model)(body.last_hidden_state[rows_at, cols_at])
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs[
        torch.arange(len(where), device=device), torch.tensor([w[2] for w in where], device=device)
    ]
    for (_, _, _, job, option), value in zip(where, picked.tolist(), strict=True):
        scores[job][option] += value


def _causal_lm(model: Any) -> Any:
    """The transformers model under a peft wrapper (its LoRA layers and hooks stay on)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _body(model: Any) -> Any:
    """The decoder without its output layer."""
    causal = _causal_lm(model)
    return getattr(causal, causal.base_model_prefix)


def _head(model: Any) -> Any:
    return _causal_lm(model).get_output_embeddings()
