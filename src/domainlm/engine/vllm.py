"""The vLLM command that serves a base model and its experts, for the upstream backend.

vLLM loads peft's adapter folders unchanged (`--lora-modules NAME=FOLDER`) and lists each
as a model whose `parent` is the base, which is what `UpstreamEngine` reads. vLLM itself
does not run here (no CUDA wheels where a GPU is); the command is printed for the machine
that has one.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from domainlm.errors import DomainLMError
from domainlm.expert import PARTIAL_SUFFIX, check_expert
from domainlm.models.base import convert_gguf, resolve_model_path
from domainlm.models.tokenizer import TINY

#: The ranks vLLM's --max-lora-rank accepts.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: LoRA targets vLLM does not serve from a peft folder.
_UNSERVED = ("embed_tokens", "lm_head", "wte")


@dataclass
class VllmPlan:
    model: Path
    experts: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    max_rank: int = 8

    def command(self, host: str = "127.0.0.1", port: int = 8000, name: str = "base") -> list[str]:
        words = ["vllm", "serve", str(self.model), "--served-model-name", name]
        words += ["--host", host, "--port", str(port)]
        if self.experts:
            words += ["--enable-lora", "--max-loras", str(len(self.experts))]
            words += ["--max-lora-rank", str(self.max_rank), "--lora-modules"]
            words += [f"{n}={p}" for n, p in self.experts.items()]
        return words

    def shell(self, host: str = "127.0.0.1", port: int = 8000, name: str = "base") -> str:
        return shlex.join(self.command(host, port, name))


def vllm_plan(model: str, experts: Path | None) -> VllmPlan:
    """The base model folder vLLM loads and the experts it can serve (with why the others
    cannot: not finished, no card, LoRA on embeddings or the output layer).

    Raises:
        DomainLMError: the tiny test model, or a model or experts folder that is missing.
    """
    if model == TINY:
        raise DomainLMError("the tiny model is built in-process: vLLM needs a model folder")
    path = resolve_model_path(model)
    folder = convert_gguf(path)[0] if path.suffix == ".gguf" else path.resolve()
    plan = VllmPlan(folder)
    if experts is None:
        return plan
    if not experts.is_dir():
        raise DomainLMError(f"{experts}: no such experts folder")
    ranks = [1]
    for candidate in sorted(p for p in experts.iterdir() if p.is_dir()):
        if candidate.name.startswith("."):
            continue
        name = candidate.name.removesuffix(PARTIAL_SUFFIX)
        try:
            card = check_expert(candidate)
        except DomainLMError as exc:
            plan.skipped[name] = str(exc)
            continue
        config = json.loads((candidate / "adapter_config.json").read_text(encoding="utf-8"))
        targets = config.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else targets
        unserved = [t for t in [*targets, *(config.get("modules_to_save") or [])]
                    if any(u in t for u in _UNSERVED)]  # fmt: skip
        if unserved:
            plan.skipped[card.name] = (
                f"{candidate}: LoRA on {', '.join(unserved)}, which vLLM does not serve from "
                "an adapter folder (merge it instead: `domainlm export --merge`)"
            )
            continue
        plan.experts[card.name] = candidate.resolve()
        ranks += [int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())]
    plan.max_rank = next((r for r in VLLM_RANKS if r >= max(ranks)), max(ranks))
    return plan
