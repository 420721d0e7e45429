"""`domainlm export EXPERT --merge OUT`: the base model with an expert's adapter merged in,
written as an ordinary Hugging Face folder (for tools that do not load LoRA adapters).

The merged weights keep the base's own dtype (a bf16 checkpoint stays bf16; a quantised
GGUF base, whose weights fit 16 bits, is written in bf16), and the folder gets the usual
permissions (umask), like any folder the user makes; it appears whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.expert import check_expert
from domainlm.models.base import load_base, resolve_model_path
from domainlm.models.tokenizer import TINY


def merge_expert(expert: Path, out: Path, base_path: str | None = None) -> Path:
    """Merge `expert` into its base and save the result to `out` (written atomically).

    Args:
        base_path: where the base model is now, if not where the card says.

    Raises:
        DomainLMError: if the expert is incomplete, the base is missing or is not the
            model the expert was trained on (content hash differs), or `out` exists or
            cannot be made.
    """
    card = check_expert(expert)
    if out.exists():
        raise DomainLMError(f"{out}: already exists (choose a new folder)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DomainLMError(f"cannot create {out}: {exc.strerror or exc}") from None
    spec = base_path or card.base.model
    base = load_base(spec, dtype=base_dtype(spec), trust_remote_code=False)
    if base.content_hash != card.base.content_hash:
        raise DomainLMError(
            f"{spec}: not the base {card.name} was trained on "
            f"(weights hash {base.content_hash}, expected {card.base.content_hash})"
        )
    from peft import PeftModel

    merged = PeftModel.from_pretrained(base.model, str(expert)).merge_and_unload()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(staging)
        base.tokenizer.save_pretrained(staging)
        _usual_modes(staging)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def base_dtype(spec: str) -> Any:
    """The dtype the base's weights come in: a HF folder's own (`auto`); for a GGUF file
    f32 or f16 as stored, else bf16 (bf16 GGUFs, and quantised ones, whose 4-8 bit values
    times fp16 scales bf16 holds far within the quantisation's own error); the built-in
    tiny model's fp32."""
    import torch

    if spec == TINY:
        return None
    path = resolve_model_path(spec)
    if path.suffix != ".gguf":
        return "auto"
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError:  # a GGUF base converted earlier loads without the package
        return torch.bfloat16
    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return torch.bfloat16
    dtypes: dict[int, torch.dtype] = {
        int(LlamaFileType.ALL_F32): torch.float32,
        int(LlamaFileType.MOSTLY_F16): torch.float16,
    }
    return dtypes.get(int(field.contents()), torch.bfloat16)


def _usual_modes(folder: Path) -> None:
    """The modes a folder and files made by the user get: mkdtemp makes the folder 0700,
    and transformers writes its weights 0600."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
