"""The training loss, in one place: chunked cross-entropy on trained positions only.

A causal LM's forward would build (batch, seq, vocab) fp32 logits: 4 x 2048 x 150k x 4 bytes
is 4.9 GB for ChatGLM3, and in SFT most positions (the prompt) are not trained at all. Here
the decoder's hidden states are gathered at the trained positions first, and the output
layer and the cross-entropy run over chunks of those. With a frozen output layer (the
usual LoRA case) each chunk's gradient with respect to the hidden states is computed in
the forward pass itself (softmax minus one-hot, times the layer's weight), so no logits
are kept for backward and none are computed twice: one chunk of logits is alive at a time.
An adapted output layer needs its logits' gradient in backward: its chunks are kept, or
recomputed when they would be large (activation checkpointing).

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
#: fp32 logits per chunk of the frozen-head path (each chunk's are freed before the next).
#: Small enough that the buffers are reused from the heap: 128 MB chunks left holes there
#: that later steps could not fill (peak 2.07 GB against 1.81 GB for SmolLM2-135M at
#: 4 x 1024 tokens with gradient checkpointing) and were slower to fault in.
CHUNK_BYTES = 32 * 1024 * 1024
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


class _FrozenHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` (a frozen, bias-free output layer) whose
    gradient with respect to `hidden` is worked out chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        softcap: float | None,
        chunk: int,
    ) -> torch.Tensor:
        weight = weight.to(hidden.dtype)  # autocast runs the head in the hidden states' dtype
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)  # (trained, dim)
        for start in range(0, hidden.shape[0], chunk):
            piece, wanted = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (piece @ weight.T).float()  # (chunk, vocab)
            squash = None
            if softcap:
                squash = torch.tanh(logits / softcap)
                logits = softcap * squash
            lse = torch.logsumexp(logits, dim=-1)
            rows = torch.arange(len(wanted), device=logits.device)
            total += (lse - logits[rows, wanted]).sum()
            # d loss / d logits = softmax - one_hot, computed in place over the logits.
            probs = logits.sub_(lse[:, None]).exp_()
            probs[rows, wanted] -= 1.0
            if squash is not None:
                probs.mul_(1.0 - squash.square_())
            grad[start : start + chunk] = probs.to(hidden.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> Any:
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None, None, None


def _frozen_linear(head: nn.Module) -> bool:
    return type(head) is nn.Linear and head.bias is None and not head.weight.requires_grad


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
    vocab = int(getattr(head, "out_features", None) or head.weight.shape[0])  # type: ignore[index]
    if _frozen_linear(head):
        rows = max(1, min(chunk, CHUNK_BYTES // (vocab * 4)))
        loss = _FrozenHeadLoss.apply(selected, head.weight, wanted, softcap, rows)
        return loss
    total = hidden.new_zeros((), dtype=torch.float32)
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
