"""The typed recipe that trains one expert: YAML plus dotted `key=value` overrides.

Every section is a pydantic model with a description per field; unknown keys are errors,
and each error names the file and the dotted field (`recipe.yaml: optim.lr: ...`).

Paths (datasets, eval.dev, output_dir, a base folder, from_expert) follow one rule: a
path written in a YAML file is relative to that file's folder; a path given on the command
line is relative to the working directory. Either way the recipe holds it absolute and
normalised, and so does every card and checkpoint made from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from domainlm.errors import DomainLMError
from domainlm.expert import PARTIAL_SUFFIX
from domainlm.io import read_yaml
from domainlm.models.base import DEFAULT
from domainlm.models.tokenizer import TINY

#: Where a recipe holds paths ("*": every item of a list).
PATH_FIELDS = (
    ("datasets", "*", "path"),
    ("eval", "dev"),
    ("eval", "suite"),
    ("output_dir",),
    ("from_expert",),
    ("base", "path"),
)
#: base.path values that name a model rather than a path.
MODEL_NAMES = (DEFAULT, TINY)
#: Keys of which a recipe gives exactly one: setting one (by an override, or in a manifest
#: entry over its defaults) drops the other.
ONE_OF = {"optim": ("max_steps", "epochs")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _normal(path: Path | None) -> Path | None:
    """Absolute and normalised (a recipe built in code has paths relative to the working
    directory; `load_recipe` has made the others absolute already)."""
    return None if path is None else path.expanduser().resolve()


class BaseModelSpec(_Section):
    """Which base model to adapt and how to load it."""

    path: str = Field(description="Local HF folder, a .gguf file, `default` or `tiny`.")
    chat_format: Literal["auto", "chatglm3", "hf"] = Field(
        "auto",
        description="How conversations become tokens: `chatglm3` (ChatGLM3's own tokens), "
        "`hf` (the tokenizer's chat template) or `auto` (chatglm3 for ChatGLM3's tokenizer, "
        "else hf); the expert's card records the one used.",
    )
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute dtype; auto picks bf16 where the hardware has it."
    )
    trust_remote_code: bool = Field(
        False, description="Run the model folder's own code (ChatGLM3)."
    )
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit base weights (GPU, bitsandbytes).")
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; auto picks the fastest one for the device."
    )

    @field_validator("path")
    @classmethod
    def _normal_path(cls, path: str) -> str:
        return path if path in MODEL_NAMES or not path.strip() else str(_normal(Path(path)))


class DatasetSpec(_Section):
    """One training dataset and its share of the mix."""

    path: Path = Field(description="Conversation JSONL (sft) or JSONL/text with raw text (pt).")
    weight: float = Field(1.0, gt=0, description="Relative sampling weight in the mix.")
    text_field: str = Field("text", description="Field holding raw text, for stage pt.")

    _normal_path = field_validator("path")(_normal)


class LoraSpec(_Section):
    """The LoRA adapter."""

    r: int = Field(8, gt=0, description="Rank.")
    alpha: int = Field(16, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the adapter input (0.05-0.1 regularises small data sets; "
        "it keeps no extra memory, as the mask is drawn again in backward, but costs time).",
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear."
    )


class OptimSpec(_Section):
    """Optimisation and batching."""

    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="LR schedule after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    max_steps: int | None = Field(None, gt=0, description="Optimiser steps (or give epochs).")
    epochs: float | None = Field(
        None, gt=0, description="Passes over the data (or give max_steps)."
    )
    batch_size: int = Field(4, gt=0, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimiser step.")
    max_seq_len: int = Field(
        2048, gt=0, description="Tokens per sequence; longer examples are truncated."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    packing: bool = Field(
        True, description="Pack examples into full sequences (no padding compute)."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")

    @model_validator(mode="after")
    def _one_length(self) -> OptimSpec:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps and epochs")
        return self


class EvalSpec(_Section):
    """Evaluation during training."""

    dev: Path | None = Field(None, description="Dev set (Conversation JSONL).")
    eval_steps: int = Field(100, gt=0, description="Evaluate every this many steps.")
    samples: int = Field(3, ge=0, description="Dev prompts answered by base and expert at the end.")
    suite: Path | None = Field(
        None,
        description="An eval suite (recipes/eval/) run on the base and the new expert at the "
        "end; the report goes into the expert folder (eval/) and the summary into its card.",
    )

    _normal_path = field_validator("dev", "suite")(_normal)


class Recipe(_Section):
    """Everything needed to train one expert."""

    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$", description="Expert name (a folder name).")
    description: str = Field("", description="What the expert is for (used by the router).")
    stage: Literal["sft", "pt"] = Field(
        "sft", description="Supervised fine-tuning or continued pre-training."
    )
    base: BaseModelSpec = Field(description="The base model.")
    datasets: list[DatasetSpec] = Field(min_length=1, description="Datasets and mixing weights.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="The LoRA adapter.")
    optim: OptimSpec = Field(description="Optimisation and batching.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation during training.")
    save_steps: int = Field(200, gt=0, description="Checkpoint every this many steps.")
    seed: int = Field(42, description="Seed for data order, initialisation and dropout.")
    output_dir: Path = Field(description="Where the expert directory is written.")
    system_prompt: str | None = Field(
        None, description="System prompt for conversations without one."
    )
    from_expert: Path | None = Field(
        None,
        description="Start from this expert's adapter instead of a fresh one (same base and "
        "LoRA shape; data, stage and optimiser may differ). `train --from EXPERT` sets it.",
    )

    _normal_paths = field_validator("output_dir", "from_expert")(_normal)

    @field_validator("name")
    @classmethod
    def _not_a_work_folder(cls, name: str) -> str:
        if name.endswith(PARTIAL_SUFFIX):
            raise ValueError(f"must not end in {PARTIAL_SUFFIX} (an unfinished run's folder)")
        return name


def apply_override(
    data: dict[str, Any], override: str, example: str = "optim.lr=1e-4"
) -> tuple[str, ...]:
    """Set `a.b.c=value` in nested `data` (`datasets.0.path=...` indexes a list); the value
    is read as YAML (`1e-4`, `true`, `[q, v]`). Returns the key's parts."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise DomainLMError(f"override {override!r}: expected KEY=VALUE, e.g. {example}")
    parts = tuple(part.strip() for part in key.strip().split("."))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise DomainLMError(f"override {override!r}: value is not valid YAML ({reason})") from None
    target: Any = data
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(target, list):
            if not part.isdigit() or int(part) >= len(target):
                raise DomainLMError(
                    f"override {override!r}: {where}: no item {part} "
                    f"(the list has {len(target)}, counted from 0)"
                )
            index: int | str = int(part)
        elif isinstance(target, dict):
            index = part
        else:
            raise DomainLMError(f"override {override!r}: {'.'.join(parts[:i])} is not a section")
        if i == len(parts) - 1:
            target[index] = value
        else:
            if isinstance(target, dict) and target.get(part) is None:
                target[part] = {}
            target = target[index]
    return parts


def _apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Overrides in order; their paths are relative to the working directory, and setting
    one key of a `ONE_OF` pair drops the other unless it is overridden too."""
    given = []
    for override in overrides:
        parts = apply_override(data, override)
        _resolve_paths(data, Path.cwd(), under=parts)
        given.append(parts)
    for section, keys in ONE_OF.items():
        node = data.get(section)
        if not isinstance(node, dict):
            continue
        for key in keys:
            if (section, key) in given and node.get(key) is not None:
                for other in keys:
                    if other != key and (section, other) not in given:
                        node.pop(other, None)


def _resolve_paths(data: Any, folder: Path, under: tuple[str, ...] = ()) -> None:
    """Make the `PATH_FIELDS` in the recipe dict `data` (those at or below `under`)
    absolute against `folder`, normalised. Values of the wrong type are left for validation."""

    def visit(node: Any, pattern: tuple[str, ...], at: tuple[str, ...]) -> None:
        key, rest = pattern[0], pattern[1:]
        items: list[tuple[Any, Any]]
        if key == "*":
            items = list(enumerate(node)) if isinstance(node, list) else []
        else:
            items = [(key, node[key])] if isinstance(node, dict) and key in node else []
        for name, child in items:
            here = (*at, str(name))
            if rest:
                visit(child, rest, here)
            elif here[: len(under)] == under:
                node[name] = _absolute(
                    child, folder, model=pattern == ("path",) and at == ("base",)
                )

    for pattern in PATH_FIELDS:
        visit(data, pattern, ())


def _absolute(value: Any, folder: Path, model: bool = False) -> Any:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or (model and value in MODEL_NAMES):
        return value
    return str((folder / Path(value).expanduser()).resolve())


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "recipe", "recipes/tiny_sft.yaml")
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a YAML {type(data).__name__}"
        raise DomainLMError(
            f"{path}: a recipe is a YAML mapping of sections (name, base, datasets, optim, "
            f"output_dir …); this file is {found}"
        )
    return data


def _validate(data: dict[str, Any], path: Path, where: str = "") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "<recipe>"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DomainLMError(f"{path}: {where}{field}: {error['msg']}{more}") from None
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe.

    Raises:
        DomainLMError: naming the file and the first bad field.
    """
    path = Path(path)
    data = _read_yaml(path)
    _resolve_paths(data, path.resolve().parent)
    _apply_overrides(data, overrides or [])
    return _validate(data, path)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, section by section; a `ONE_OF` key set in `extra` drops the
    others from `base`."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            lower = merged[key]
            if value.keys() & set(ONE_OF.get(key, ())):
                lower = {k: v for k, v in lower.items() if k not in ONE_OF[key]}
            merged[key] = _merge(lower, value)
        else:
            merged[key] = value
    return merged


def is_manifest(path: str | Path) -> bool:
    """True for a several-experts file (top-level `experts:` list)."""
    return "experts" in _read_yaml(Path(path))


def load_manifest(path: str | Path, overrides: list[str] | None = None) -> list[Recipe]:
    """The recipes of a manifest: `defaults` (any recipe fields) merged under each entry of
    `experts` (a list of partial recipes, each with at least a name and its datasets).

    Raises:
        DomainLMError: naming the file, the expert and the bad field.
    """
    path = Path(path)
    data = _read_yaml(path)
    unknown = set(data) - {"defaults", "experts"}
    if unknown:
        raise DomainLMError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} "
            "(a manifest has `defaults` and `experts`)"
        )
    defaults, entries = data.get("defaults") or {}, data.get("experts")
    if not isinstance(defaults, dict):
        raise DomainLMError(f"{path}: defaults: expected a mapping of recipe fields")
    if not isinstance(entries, list) or not entries:
        raise DomainLMError(f"{path}: experts: expected a non-empty list of recipes")
    recipes = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DomainLMError(f"{path}: experts[{i}]: expected a mapping of recipe fields")
        merged = _merge(defaults, entry)
        _resolve_paths(merged, path.resolve().parent)
        _apply_overrides(merged, overrides or [])
        recipes.append(_validate(merged, path, f"experts[{i}] ({entry.get('name', '?')}): "))
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise DomainLMError(f"{path}: experts: names must be unique")
    return recipes
