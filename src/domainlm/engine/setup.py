"""Put an Assistant together from what the user names: model, experts, KB, tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from domainlm.chat.formats import get_format
from domainlm.engine.adapters import AdapterPool
from domainlm.engine.assistant import Assistant
from domainlm.engine.generation import Sampling
from domainlm.errors import DomainLMError
from domainlm.models.base import load_base

TOOLSETS = ("finance", "code")


def device_dtype() -> tuple[str, torch.dtype]:
    """bf16 on a GPU that has it or a CPU with AVX512-BF16/AMX, else fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    fast_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "cpu", torch.bfloat16 if fast_bf16 else torch.float32


def make_toolset(names: list[str]) -> Any:
    from domainlm.tools import Toolset

    tools = []
    for name in names:
        if name == "finance":
            from domainlm.tools.finance import FINANCE_TOOLS

            tools += FINANCE_TOOLS
        elif name == "code":
            from domainlm.tools.interpreter import CODE_TOOLS

            tools += CODE_TOOLS
        else:
            raise DomainLMError(f"unknown toolset {name!r} (choose from {', '.join(TOOLSETS)})")
    return Toolset(tools) if tools else None


def load_pool(
    model: str,
    experts: list[Path],
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> AdapterPool:
    """The base `model` (on the GPU when there is one, in `dtype` or the fast one of
    `device_dtype`) with every expert under each of `experts` loaded; why other folders
    there were passed over is in `pool.skipped`."""
    device, fast = device_dtype()
    base = load_base(model, dtype=dtype or fast, trust_remote_code=trust_remote_code)
    if device == "cuda":
        base.model.to(device)
    base.model.eval()
    if base.tokenizer.pad_token_id is None:
        base.tokenizer.pad_token = base.tokenizer.eos_token
    pool = AdapterPool(base, roots=list(experts) or None)
    for folder in experts:
        pool.scan(folder)  # folders that are not experts: reasons in pool.skipped
    return pool


def build_assistant(
    model: str = "default",
    experts: Path | None = None,
    kb: Path | None = None,
    tools: list[str] | None = None,
    chat_format: str = "auto",
    trust_remote_code: bool = False,
    sampling: Sampling | None = None,
) -> Assistant:
    """An Assistant over `model` with every expert under `experts` loaded (or `experts`
    itself when it is an expert folder); why other folders there were passed over is in
    `assistant.pool.skipped`.

    Raises:
        DomainLMError: for a missing model, KB or experts folder, or an `experts` that is
            an expert folder but does not load.
    """
    pool = load_pool(model, [experts] if experts else [], trust_remote_code=trust_remote_code)
    base = pool.base
    knowledge = None
    if kb is not None:
        from domainlm.kb.base import KnowledgeBase

        knowledge = KnowledgeBase.open(kb)
    return Assistant(
        pool,
        get_format(chat_format, base.tokenizer),
        kb=knowledge,
        toolset=make_toolset(tools or []),
        sampling=sampling,
    )
