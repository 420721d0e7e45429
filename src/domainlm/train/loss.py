"""The training loss, in one place: chunked cross-entropy on trained positions only.

A causal LM's forward would build (batch, seq, vocab) fp32 logits: 4 x 2048 x 150k x 4 bytes
is 4.9 GB for ChatGLM3, and in SFT most positions (the prompt) are not trained at all. Here
the decoder's hidden states are gathered at the trained positions first, and the output
layer and the cross-entropy run over chunks of those, each chunk recomputed in backward
(activation checkpointing) so at most one chunk of logits is alive at a time.

Normalisation: `LossModel` returns the *sum* of token losses; the trainer divides by the
number of trained tokens in the whole optimiser step (all micro-batches, all processes),
so every trained token weighs the same however the tokens fall into micro-batches, packed
rows or processes (`step_scale`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from domainlm.chat.formats import IGNORE_INDEX

#: Trained positions per logits chunk: 1024 x 150k vocab x 4 bytes = 600 MB at most.
CHUNK_TOKENS = 1024
#: Below this many bytes of fp32 logits for the whole batch, chunks keep their logits for
#: backward instead of recomputing them (the recompute costs a third of the loss's time).
RECOMPUTE_ABOVE_BYTES = 512 * 1024 * 1024


def _chunk_loss(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, cap: float | None
) -> torch.Tensor:
    logits = head(hidden).float()  # (chunk, vocab)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None = None,
    chunk: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """Sum of token losses of `hidden` (rows, seq, dim) against `targets` (rows, seq)."""
    keep = targets != IGNORE_INDEX
    selected = hidden[keep]  # (trained, dim)
    wanted = targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    vocab = int(getattr(head, "out_features", None) or head.weight.shape[0])  # type: ignore[index]
    recompute = selected.shape[0] * vocab * 4 > RECOMPUTE_ABOVE_BYTES
    for start in range(0, selected.shape[0], chunk):
        piece = selected[start : start + chunk]
        if recompute and torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_loss,
                head,
                piece,
                wanted[start : start + chunk],
                softcap,
                use_reentrant=False,
            )
        else:
            total = total + _chunk_loss(head, piece, wanted[start : start + chunk], softcap)
    return total


class LossModel(nn.Module):
    """A causal LM whose forward returns the summed loss of a batch (what DDP/FSDP wrap)."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        # A tuple, so the decoder and head are not registered twice as submodules.
        self._parts = (
            getattr(causal_lm, "get_decoder", lambda: None)(),
            causal_lm.get_output_embeddings(),
        )
        self._softcap = getattr(causal_lm.config, "final_logit_softcapping", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": attention_mask,
            "use_cache": False,
        }
        decoder, head = self._parts
        if decoder is None or head is None:
            # Models without a separable decoder/head (some remote-code ones): full logits.
            logits = self.model(**inputs).logits.float()
            return F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        hidden = decoder(**inputs).last_hidden_state  # (rows, seq, dim)
        return chunked_cross_entropy(head, hidden, targets, self._softcap)


def step_scale(trained_tokens_in_step: int, world_size: int) -> float:
    """Factor turning a micro-batch's summed loss into its share of the step's mean loss.

    DDP averages gradients over processes, so each process multiplies by `world_size` to
    make the result the mean over every trained token of the step on every process.
    """
    return world_size / max(trained_tokens_in_step, 1)
