"""Expert: the directory a training run produces and the engine, server and evaluation
consume — a peft adapter plus its card — and why a folder is not one.

```
EXPERT/
  adapter_config.json  adapter_model.safetensors   peft's own files (peft, vLLM load them)
  expert.yaml          the card: base model and hash, chat format, recipe, data, metrics
  metrics.jsonl        one row per optimiser step (and eval_loss where evaluated)
  loss.png             training and eval loss against step
  checkpoints/         resumable training state (latest few and the best)
```

Until training and its end step (before/after samples, card) are done, the run works in
`EXPERT.partial/`; that folder is renamed to `EXPERT/` once complete, so an expert folder
is whole or absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domainlm.errors import DomainLMError
from domainlm.io import atomic_write

CARD_FILE = "expert.yaml"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: `EXPERT.partial`: where the run making EXPERT works until the expert is complete.
PARTIAL_SUFFIX = ".partial"
RESUME_HINT = "to finish it: `domainlm train RECIPE --resume`"


class BaseRef(BaseModel):
    """The base model an expert was trained on."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="What the recipe named (folder, .gguf, default, tiny).")
    content_hash: str = Field(description="Fingerprint of the base weights.")
    chat_format: str = Field(description="How conversations were rendered to tokens.")


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    content_hash: str
    examples: int
    weight: float


class RunRecord(BaseModel):
    """One training run that shaped an expert's adapter: its first run, each continuation
    (`train RECIPE --resume` with more steps or a new schedule), and, for an expert started
    from another one's adapter (`train --from`), that expert's runs."""

    model_config = ConfigDict(extra="forbid")

    expert: str = Field(description="The expert this run trained (whose step numbers these are).")
    first_step: int = Field(description="First optimiser step of the run (1-based).")
    last_step: int = Field(description="Last optimiser step of the run.")
    stage: str
    lr: float
    schedule: str
    warmup_steps: int
    max_steps: int | None = None
    epochs: float | None = None
    datasets: list[DatasetRef] = Field(default_factory=list)
    train_loss: float | None = None
    eval_loss: float | None = None
    started_from: str | None = Field(
        None, description="The expert whose adapter the run began with (`--from`), if any."
    )


class ExpertCard(BaseModel):
    """expert.yaml: what an expert is, what it was trained from, and how well it did."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    base: BaseRef
    stage: str
    system_prompt: str | None = None
    datasets: list[DatasetRef] = Field(default_factory=list)
    metrics: dict[str, float | int | None] = Field(default_factory=dict)
    recipe: dict[str, Any] = Field(default_factory=dict)
    samples: list[dict[str, str]] = Field(default_factory=list)
    evaluation: dict[str, Any] = Field(
        default_factory=dict,
        description="The recipe's eval suite on base and expert: per task, both scores and "
        "the difference with its 95% interval (the report is in the folder's eval/).",
    )
    runs: list[RunRecord] = Field(
        default_factory=list, description="Every run that trained the adapter, oldest first."
    )
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    domainlm_version: str = ""


@dataclass(frozen=True)
class Expert:
    """A complete expert directory and its card."""

    folder: Path
    card: ExpertCard

    @classmethod
    def open(cls, folder: str | Path) -> Expert:
        """Raises DomainLMError saying why `folder` is not a complete expert."""
        folder = Path(folder)
        return cls(folder, check_expert(folder))

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The training run's metrics rows (step, loss, eval_loss …)."""
        return read_metrics(self.folder / METRICS_FILE)


def write_card(folder: Path, card: ExpertCard) -> None:
    with atomic_write(folder / CARD_FILE) as handle:
        yaml.safe_dump(
            card.model_dump(mode="json"), handle, allow_unicode=True, sort_keys=False, width=100
        )


def read_card(folder: Path) -> ExpertCard:
    """The card of the expert in `folder`.

    Raises:
        DomainLMError: if the folder has no card or its card is unreadable or invalid.
    """
    path = folder / CARD_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DomainLMError(f"{folder}: not an expert (no {CARD_FILE})") from None
    except yaml.MarkedYAMLError as exc:
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        raise DomainLMError(f"{path}: unreadable expert card: {exc.problem}{where}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())
        raise DomainLMError(f"{path}: unreadable expert card: {reason}") from None
    try:
        return ExpertCard.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise DomainLMError(f"{path}: invalid expert card: {fields}") from None


def partial_folder(expert: Path) -> Path:
    """Where the run making `expert` keeps its checkpoints and metrics until it is done."""
    return expert.with_name(expert.name + PARTIAL_SUFFIX)


def check_expert(folder: Path) -> ExpertCard:
    """The card of the complete expert in `folder`.

    Raises:
        DomainLMError: one line saying why `folder` is not an expert (an unfinished run,
            no card, an unreadable card, missing adapter files).
    """
    if not folder.is_dir():
        raise DomainLMError(f"{folder}: no such expert folder")
    if folder.name.endswith(PARTIAL_SUFFIX):
        name = folder.name.removesuffix(PARTIAL_SUFFIX)
        raise DomainLMError(
            f"{folder}: not an expert: the working folder of an unfinished training run "
            f"of {name!r} ({RESUME_HINT})"
        )
    if not (folder / CARD_FILE).is_file():
        raise DomainLMError(f"{folder}: not an expert: {_why_no_card(folder)}")
    card = read_card(folder)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise DomainLMError(f"{folder}: not an expert: no {' and no '.join(missing)}")
    try:
        config = json.loads((folder / ADAPTER_FILES[0]).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DomainLMError(f"{folder / ADAPTER_FILES[0]}: unreadable: {exc}") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise DomainLMError(f"{folder / ADAPTER_FILES[0]}: not a peft adapter config")
    _check_weights(folder / ADAPTER_FILES[1])
    return card


def _check_weights(path: Path) -> None:
    """Read the safetensors header, which also checks the file is as long as it says."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except Exception as exc:  # safetensors raises its own (Rust) error type, or OSError
        raise DomainLMError(f"{path}: unreadable adapter weights: {exc}") from None


def _why_no_card(folder: Path) -> str:
    adapter = all((folder / name).is_file() for name in ADAPTER_FILES)
    checkpoints = (folder / "checkpoints").is_dir()
    if checkpoints or (folder / METRICS_FILE).is_file():
        # A run from before experts were written whole, stopped before its card.
        found = "adapter files" if adapter else "checkpoints" if checkpoints else "metrics"
        return f"training did not finish ({found} but no {CARD_FILE}; {RESUME_HINT})"
    if adapter:
        return f"adapter files but no {CARD_FILE} (experts are made by `domainlm train`)"
    return f"no {CARD_FILE}"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is gone too
    return rows
