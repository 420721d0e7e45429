"""`domainlm export EXPERT --merge OUT`: the base model with an expert's adapter merged in,
written as an ordinary Hugging Face folder (for tools that do not load LoRA adapters)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from domainlm.errors import DomainLMError
from domainlm.expert import check_expert
from domainlm.models.base import load_base


def merge_expert(expert: Path, out: Path, base_path: str | None = None) -> Path:
    """Merge `expert` into its base and save the result to `out` (written atomically).

    Args:
        base_path: where the base model is now, if not where the card says.

    Raises:
        DomainLMError: if the expert is incomplete, the base is missing or is not the
            model the expert was trained on (content hash differs), or `out` exists.
    """
    card = check_expert(expert)
    if out.exists():
        raise DomainLMError(f"{out}: already exists (choose a new folder)")
    base = load_base(base_path or card.base.model, trust_remote_code=False)
    if base.content_hash != card.base.content_hash:
        raise DomainLMError(
            f"{base_path or card.base.model}: not the base {card.name} was trained on "
            f"(weights hash {base.content_hash}, expected {card.base.content_hash})"
        )
    from peft import PeftModel

    merged = PeftModel.from_pretrained(base.model, str(expert)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(staging)
        base.tokenizer.save_pretrained(staging)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
