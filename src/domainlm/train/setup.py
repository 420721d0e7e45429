"""What a run needs before its first step: precision, the LoRA model, data, optimiser, schedule.

In: a `Recipe`. Out: the pieces `trainer.train` puts together.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from domainlm.chat.formats import ChatFormat, Rendered, get_format
from domainlm.errors import DomainLMError
from domainlm.models.base import BaseModel, load_base
from domainlm.train.batching import (
    Dataset,
    file_hash,
    read_conversations,
    render_sft,
    tokenize_pt,
    tokenize_sft,
)
from domainlm.train.lora import fold_dropout
from domainlm.train.recipe import LoraSpec, OptimSpec, Recipe


@dataclass
class Precision:
    """Weights dtype of the frozen base and the autocast dtype (None: plain fp32)."""

    base_dtype: torch.dtype
    autocast: str  # accelerate's mixed_precision: "bf16", "fp16" or "no"


def choose_precision(dtype: str, device: str) -> Precision:
    """bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX512-BF16/AMX),
    fp16 on older GPUs, else fp32. LoRA weights stay fp32 (master weights) in every case."""
    if dtype == "auto":
        if device == "cuda":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            dtype = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    if dtype == "fp16" and device != "cuda":
        raise DomainLMError("base.dtype fp16 needs a GPU; use bf16 or fp32 on CPU")
    table = {
        "bf16": Precision(torch.bfloat16, "bf16"),
        "fp16": Precision(torch.float16, "fp16"),
        "fp32": Precision(torch.float32, "no"),
    }
    return table[dtype]


def set_threads() -> None:
    """One intra-op thread per core this process may use (shared fairly between the
    processes of a multi-process CPU run), one inter-op thread: the model's ops run
    one after another, and oversubscribed threads are slower than idle ones."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_process = max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(per_process)
    # Raises when already set once in this process (a second run in the same interpreter).
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def tune_allocator() -> None:
    """Keep freed memory in the heap on CPU (glibc): no mmap'd blocks, no trimming.

    Each step frees and reallocates the same large activation and logits buffers. With
    glibc's defaults the big ones are mmap'd and returned to the OS at once, so every step
    page-faults them in again, which cost about a fifth of a step for SmolLM2-135M here.
    (IPEX's docs recommend jemalloc/tcmalloc for the same reason; mallopt needs neither.)
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass  # not glibc: leave the allocator alone


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def attention_for(requested: str, device: str, max_seq_len: int) -> str | None:
    """The attention kernel: on CPU, plain (eager) attention beats SDPA's CPU kernel for
    short rows (about 15% at 256 tokens) while its (rows, heads, seq, seq) scores stay
    small; longer rows use SDPA. None keeps the model's own choice."""
    if requested != "auto":
        return requested
    if device == "cpu" and max_seq_len <= 512:
        return "eager"
    return None


def load_model(recipe: Recipe, precision: Precision, device: str) -> BaseModel:
    """The base model, frozen, in the base dtype (or 4-bit for QLoRA)."""
    spec = recipe.base
    quantization = None
    if spec.load_in_4bit:
        quantization = _bnb_config(precision, device)
    base = load_base(
        spec.path,
        dtype=precision.base_dtype,
        trust_remote_code=spec.trust_remote_code,
        quantization_config=quantization,
        device_map={"": torch.cuda.current_device()} if quantization is not None else None,
    )
    if base.tokenizer.pad_token_id is None:
        base.tokenizer.pad_token = base.tokenizer.eos_token
    return base


def set_attention(model: Any, attention: str | None) -> str | None:
    """Switch `model` to the attention kernel `attention` (None: leave it); returns the
    one it had, which inference (the engine) uses."""
    before = getattr(model.config, "_attn_implementation", None)
    if attention is not None and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attention)
    return before


def _bnb_config(precision: Precision, device: str) -> Any:
    if device != "cuda":
        raise DomainLMError("base.load_in_4bit (QLoRA) needs a CUDA GPU")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise DomainLMError(
            "base.load_in_4bit needs bitsandbytes: pip install bitsandbytes"
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=precision.base_dtype,
    )


def attach_lora(
    model: Any, spec: LoraSpec, gradient_checkpointing: bool, quantized: bool, autocast: bool
) -> Any:
    """`model` with a fresh LoRA adapter named `default`; only the adapter is trainable.

    Under autocast, peft's cast of every adapter input to the fp32 adapter dtype is turned
    off: autocast casts operands for each matmul anyway, and the extra copies of the
    activations cost about a tenth of a CPU step.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        # peft keeps adapter weights in fp32 over a bf16/fp16 base (autocast_adapter_dtype).
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise DomainLMError(f"lora.target_modules: {exc}") from None
    fold_dropout(peft_model)  # the adapters' input dropout, recomputed instead of stored
    if autocast:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in peft_model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False  # type: ignore[assignment]
    return peft_model


def load_datasets(recipe: Recipe, tokenizer: Any, chat_format: ChatFormat) -> list[Dataset]:
    """Every dataset of the recipe, tokenized for its stage."""
    datasets = []
    max_len = recipe.optim.max_seq_len
    for spec in recipe.datasets:
        _check_file("datasets", spec.path)
        truncated = 0
        if recipe.stage == "sft":
            examples, truncated = tokenize_sft(
                spec.path, chat_format, max_len, recipe.system_prompt
            )
        else:
            examples = tokenize_pt(spec.path, tokenizer, spec.text_field, max_len)
        if not examples:
            raise DomainLMError(f"{spec.path}: no example has a trained token")
        datasets.append(Dataset(spec.path, spec.weight, examples, file_hash(spec.path), truncated))
    return datasets


def _check_file(field: str, path: Path) -> None:
    if path.is_dir():
        raise DomainLMError(f"{field}: {path}: is a folder, expected a data file")
    if not path.is_file():
        raise DomainLMError(f"{field}: {path}: no such file")


def load_dev(
    recipe: Recipe, tokenizer: Any, chat_format: ChatFormat
) -> tuple[list[Rendered], list[Any]]:
    """Dev examples (rendered) and the dev conversations (for before/after samples)."""
    if recipe.eval.dev is None:
        return [], []
    _check_file("eval.dev", recipe.eval.dev)
    max_len = recipe.optim.max_seq_len
    if recipe.stage == "pt":
        return tokenize_pt(recipe.eval.dev, tokenizer, recipe.datasets[0].text_field, max_len), []
    conversations = read_conversations(recipe.eval.dev, recipe.system_prompt)
    examples, _ = render_sft(conversations, chat_format, max_len)
    return examples, conversations


def make_format(recipe: Recipe, tokenizer: Any) -> ChatFormat:
    return get_format(recipe.base.chat_format, tokenizer)


def lr_factor(step: int, spec: OptimSpec, total_steps: int) -> float:
    """Multiplier of the peak LR at optimiser step `step` (0-based): linear warmup, then
    cosine/linear decay to 10% of the peak, or constant."""
    if step < spec.warmup_steps:
        return (step + 1) / (spec.warmup_steps + 1)
    if spec.schedule == "constant":
        return 1.0
    span = max(1, total_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    floor = 0.1
    if spec.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: Any, spec: OptimSpec) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise DomainLMError("lora.target_modules matched no layer: nothing to train")
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(optimizer: Any, spec: OptimSpec, steps: int) -> Any:
    """The LR schedule of a run of `steps` optimiser steps (counted from the run's start)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, spec, steps))


def start_from_expert(model: Any, folder: Path, base: BaseModel) -> tuple[list[Any], str]:
    """Load the adapter of the expert in `folder` into `model` (its fresh LoRA adapter
    must have the same shape); returns that expert's runs (for the new card) and a name
    for it.

    Raises:
        DomainLMError: `folder` is not an expert, was trained on another base, or its
            adapter has another shape (lora.r, lora.alpha, lora.target_modules).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from domainlm.expert import ADAPTER_FILES, check_expert
    from domainlm.train.runs import card_runs

    card = check_expert(folder)
    if card.base.content_hash != base.content_hash:
        raise DomainLMError(
            f"from_expert: {folder} was trained on another base model ({card.base.model}, "
            f"{card.base.content_hash}); this recipe's is {base.model_id} ({base.content_hash})"
        )
    config = json.loads((folder / ADAPTER_FILES[0]).read_text(encoding="utf-8"))
    mine = model.peft_config["default"]
    shape = {
        "lora.r": (config.get("r"), mine.r),
        "lora.alpha": (config.get("lora_alpha"), mine.lora_alpha),
        "lora.target_modules": (
            sorted(config.get("target_modules") or []),
            sorted(mine.target_modules or []),
        ),
    }
    differ = [
        f"{key} {there} there, {here} here" for key, (there, here) in shape.items() if there != here
    ]
    weights = load_file(folder / ADAPTER_FILES[1])
    expected = get_peft_model_state_dict(model)
    if not differ and (
        weights.keys() != expected.keys()
        or any(weights[k].shape != expected[k].shape for k in weights)
    ):
        differ = ["the adapter's layers"]
    if differ:
        raise DomainLMError(
            f"from_expert: {folder}: the adapter has another shape ({'; '.join(differ)}); "
            "give this recipe the same lora section"
        )
    set_peft_model_state_dict(model, weights)
    return card_runs(card), f"{card.name} ({folder})"


def count_steps(spec: OptimSpec, batches_per_epoch: int, world_size: int) -> int:
    """Optimiser steps of the run (max_steps, or epochs worth of micro-batches)."""
    if spec.max_steps is not None:
        return spec.max_steps
    per_step = spec.grad_accum * world_size
    return max(1, math.ceil((spec.epochs or 1.0) * batches_per_epoch / per_step))
