"""Batched LoRA for batches that mix experts: two batched matmuls per layer.

peft's mixed-batch path (`adapter_names=`) loops over the adapters present, slicing the
batch for each and scattering results back: per layer, one pass per adapter plus index
copies. Here every LoRA layer keeps its experts' A and B matrices stacked (slot 0 is all
zeros for rows on the base model); a row picks its slot, and the whole batch's update is

    delta = scale[slot] * (x @ A[slot]^T) @ B[slot]^T        (batch, seq, out)

computed for all experts at once: one matmul with every expert's A side by side, a per-row
mask that keeps the row's own expert, one matmul with the B's side by side. With a
handful of experts of rank 8-64 the extra work is small against the base layer and there
is no per-row gather or per-adapter loop (punica/S-LoRA gather kernels solve the same
problem on GPUs; on CPU two dense matmuls are faster than many small ones). It
runs as a forward hook on each peft LoRA layer while peft's own adapters are disabled, so
the base weights are shared and untouched. Adapters with other variants (DoRA, LoRA on
embeddings, biases in B) fall back to peft's path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Below this many tokens in a call, the CPU computes the LoRA update in fp32, from this
#: many on in the model's dtype: oneDNN's bf16 matmuls cost ~15-35 us a call at these
#: sizes whatever the rows (a one-row step: 36 us against 12 in fp32), and at 32 rows
#: bf16 is twice as fast as fp32 (80 us against 154 for 576 -> 1536, four experts, r=16).
FEW_TOKENS = 16


class _Stack:
    """One layer's experts in one dtype, transposed and scaled as the matmuls read them:
    per slot A^T (in, rank) and scale * B^T (rank, out); slot 0 (the base) and the rank
    columns an expert of smaller rank leaves unused stay zero. `a_cat`/`b_cat` hold every
    expert side by side (slot 0 left out) for batches that mix them."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        experts, fan_in, rank = a.shape[0] - 1, a.shape[1], a.shape[2]
        self.a, self.b = a, b
        self.a_cat = a[1:].permute(1, 0, 2).reshape(fan_in, experts * rank).contiguous()
        self.b_cat = b[1:].reshape(experts * rank, -1).contiguous()
        self.mask: torch.Tensor | None = None  # (batch, 1, experts * rank), 0/1 per row

    def to(self, dtype: torch.dtype) -> _Stack:
        return _Stack(self.a.to(dtype), self.b.to(dtype))


class StackedLora:
    """The stacked adapters of one peft LoRA layer, and the hook that applies them."""

    def __init__(self, layer: nn.Module, names: list[str], dtype: torch.dtype):
        lora_a: Any = layer.lora_A
        lora_b: Any = layer.lora_B
        rank = max((lora_a[n].weight.shape[0] for n in names if n in lora_a), default=1)
        sample = next(lora_a[n].weight for n in names if n in lora_a)
        fan_in = sample.shape[1]
        fan_out = next(lora_b[n].weight for n in names if n in lora_b).shape[0]
        device = sample.device
        a = torch.zeros(len(names) + 1, fan_in, rank, dtype=torch.float32, device=device)
        b = torch.zeros(len(names) + 1, rank, fan_out, dtype=torch.float32, device=device)
        self.adapted = [False] * (len(names) + 1)  # per slot: does it change this layer
        for slot, name in enumerate(names, 1):
            if name not in lora_a:
                continue  # this expert does not adapt this layer: its slot stays zero
            r = lora_a[name].weight.shape[0]
            scale = float(layer.scaling[name])  # type: ignore[index]
            a[slot, :, :r] = lora_a[name].weight.detach().float().T
            b[slot, :r] = lora_b[name].weight.detach().float().T * scale
            self.adapted[slot] = True
        self.rank = rank
        # The stacks for calls with few and with many tokens (the same one on a GPU).
        self.many = _Stack(a, b).to(dtype)
        self.few = _Stack(a, b) if device.type == "cpu" else self.many
        self.slots: torch.Tensor | None = None  # (batch,) slot per row, set per batch
        self.kept_slots: torch.Tensor | None = None  # the last rows' slots, kept between calls
        self.single = False  # every row on one expert: `single_slot`
        self.single_slot = 0

    def set_mask(self, onehot: torch.Tensor) -> None:
        """`onehot` (batch, experts): each row's expert; base rows are all zero."""
        mask = onehot.repeat_interleave(self.rank, dim=1).unsqueeze(1)
        self.many.mask = mask.to(self.many.a.dtype)
        self.few.mask = mask.to(self.few.a.dtype)

    def add_delta(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """`output` (the base layer's result for input `x`) plus each row's LoRA update;
        in place when no gradient is wanted (decode steps run 200 of these hooks, and
        their count, not their FLOPs, is what they cost on CPU)."""
        fan_in, fan_out = x.shape[-1], output.shape[-1]
        tokens = x.numel() // fan_in
        stack = self.few if tokens < FEW_TOKENS else self.many
        flat = x.reshape(tokens, fan_in).to(stack.a.dtype)
        if self.single:
            # One expert for the whole batch: plain matmuls, as a single-adapter model.
            slot = self.single_slot
            if not self.adapted[slot]:
                return output
            update = (flat @ stack.a[slot]) @ stack.b[slot]
        else:
            assert stack.mask is not None
            down = (flat @ stack.a_cat).view(x.shape[0], -1, stack.a_cat.shape[1])
            down = (down * stack.mask).view(tokens, -1)  # the row's own expert
            update = down @ stack.b_cat
        if torch.is_grad_enabled() or not output.is_contiguous():
            return output + update.view(output.shape).to(output.dtype)
        output.view(-1, fan_out).add_(update)  # a bf16 output takes an fp32 update as it is
        return output


def supported(layer: nn.Module, names: list[str]) -> bool:
    """Whether `layer` holds plain LoRA (no DoRA, no bias in B) for these adapters."""
    lora_a: Any = getattr(layer, "lora_A", None)
    lora_b: Any = getattr(layer, "lora_B", None)
    if not isinstance(lora_a, nn.ModuleDict) or not isinstance(lora_b, nn.ModuleDict):
        return False
    use_dora: Any = getattr(layer, "use_dora", {})
    for name in names:
        if name in lora_a and (
            use_dora.get(name, False)
            or getattr(lora_b[name], "bias", None) is not None
            or not isinstance(lora_a[name], nn.Linear)
        ):
            return False
    return any(name in lora_a for name in names)


def _adapts(layer: nn.Module, names: list[str]) -> bool:
    """Whether any of `names` adapts `layer` (LoRA on linear layers or on embeddings)."""
    held = [getattr(layer, attr, {}) for attr in ("lora_A", "lora_embedding_A")]
    return any(name in adapters for adapters in held for name in names)


class MultiLora:
    """Forward hooks over every LoRA layer of a peft model, applying stacked experts."""

    def __init__(self, model: Any, names: list[str]):
        from peft.tuners.lora import LoraLayer

        self.names = list(names)
        self.slot_of = {name: slot for slot, name in enumerate(self.names, 1)}
        self.layers: list[StackedLora] = []
        self.handles: list[Any] = []
        self.modules: list[Any] = []  # the peft LoRA layers the hooks stand in for
        self._rows: tuple[str | None, ...] | None = None  # what the masks were built for
        layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]
        adapted = [m for m in layers if _adapts(m, self.names)]
        usable = [m for m in adapted if supported(m, self.names)]
        # Every layer an expert adapts must be plain LoRA, or peft's path serves the batch.
        self.ok = bool(usable) and len(usable) == len(adapted)
        if not self.ok:
            return
        for module in usable:
            stacked = StackedLora(module, self.names, _lora_dtype(module))
            self.layers.append(stacked)
            self.modules.append(module)
            self.handles.append(module.register_forward_hook(_hook(stacked)))

    def set_rows(self, experts: list[str | None], device: Any) -> None:
        """Row i of the next forward passes uses `experts[i]` (None: the base). The masks
        are kept: a decode step with the same rows as the last one costs nothing here."""
        rows = tuple(experts)
        if rows == self._rows:
            for layer in self.layers:
                layer.slots = layer.kept_slots
            return
        self._rows = rows
        slots = torch.tensor([self.slot_of.get(e or "", 0) for e in experts], device=device)
        onehot = torch.nn.functional.one_hot(slots, len(self.names) + 1)[:, 1:]
        for layer in self.layers:
            layer.slots = slots
            layer.set_mask(onehot)
            layer.kept_slots = slots
            layer.single = len(set(rows)) == 1
            layer.single_slot = self.slot_of.get(rows[0] or "", 0)

    def clear(self) -> None:
        """Outside a batched call: the hooks leave peft's results alone (the masks stay
        for the next call with the same rows)."""
        for layer in self.layers:
            layer.slots = None

    def disable_peft(self) -> list[bool]:
        """Switch peft's own LoRA off in the layers the hooks cover (what peft's
        `disable_adapter()` does, without its walk over the whole model); returns the
        previous switches for `restore_peft`."""
        before = [bool(m._disable_adapters) for m in self.modules]
        for module in self.modules:
            module._disable_adapters = True
        return before

    def restore_peft(self, before: list[bool]) -> None:
        for module, disabled in zip(self.modules, before, strict=True):
            module._disable_adapters = disabled

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.layers.clear()


def _lora_dtype(module: Any) -> torch.dtype:
    """The base layer's dtype (bf16 for a quantised one)."""
    weight = module.get_base_layer().weight
    return weight.dtype if weight.is_floating_point() else torch.bfloat16


def _hook(stacked: StackedLora) -> Any:
    def apply(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if stacked.slots is None:
            return output  # not in a batched-experts call: leave peft's result alone
        return stacked.add_delta(args[0], output)

    return apply
