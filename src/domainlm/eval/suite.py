"""An evaluation suite: one typed YAML file naming tasks, their data files and settings.

    # domainlm eval recipes/eval/finance.yaml --models base,fin
    name: finance
    tasks:
      - {name: fineval, type: exam, data: ../../examples/eval/fineval/*.csv, shots: 2}
      - {name: fincalc, type: computation, data: ../../examples/eval/fincalc.jsonl}

Unknown keys are refused with their path; data paths are relative to the suite file.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domainlm.errors import DomainLMError, first_error
from domainlm.io import read_yaml
from domainlm.train.recipe import apply_override


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Task(_Strict):
    name: str = Field(description="the task's name in results and reports")
    data: str = Field(description="data file(s), a glob allowed; relative to the suite file")
    limit: int | None = Field(
        None, ge=1, description="score only N items (exams: a seeded sample across subjects)"
    )
    max_new_tokens: int = Field(256, ge=1, le=8192, description="reply length limit")
    system: str | None = Field(None, description="system prompt for generated answers")
    regression: bool = Field(
        False,
        description="a general-ability task run to catch forgetting: an expert significantly "
        "below the reference here is flagged in the report",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or "/" in value:
            raise ValueError("a task name must be non-empty, without '/'")
        return value.strip()

    def files(self, folder: Path) -> list[Path]:
        """The task's data files, or a one-line error naming what is missing."""
        pattern = self.data if Path(self.data).is_absolute() else str(folder / self.data)
        found = sorted(Path(p) for p in glob.glob(pattern))
        if not found:
            raise DomainLMError(f"task {self.name}: no data file matches {pattern}")
        return found


class ExamTask(_Task):
    """Multiple choice (C-Eval/CMMLU/FinEval CSV or JSON): accuracy per subject."""

    type: Literal["exam"]
    dev: str | None = Field(
        None, description="few-shot source: the dev split, matched to `data` by subject"
    )
    shots: int = Field(0, ge=0, le=10, description="worked examples before each question")
    scorers: list[Literal["loglik", "generate"]] = Field(
        default_factory=lambda: ["loglik", "generate"],  # type: ignore[arg-type]
        description="loglik: the option letter the model finds likeliest (as "
        "lm-evaluation-harness scores; local models, single-answer items); generate: the "
        "letters read from the model's own answer",
    )
    max_new_tokens: int = Field(32, ge=1, le=8192, description="reply length limit")


class TextTask(_Task):
    """Generated text against a reference: ROUGE-1/2/L on characters and jieba words,
    BLEU-4 (statute recitation, consultation answers)."""

    type: Literal["text"]
    prompt_field: str = Field("question", description="the field holding the question")
    instruction_field: str | None = Field(
        "instruction", description="a field put before the question, when present"
    )
    reference_field: str = Field("answer", description="the field holding the reference")


class ComputeTask(_Task):
    """Computation problems: the stated number against the reference (and, with a
    reference formula, whether the reply writes a calculation that comes to its value)."""

    type: Literal["computation"]
    question_field: str = Field("question", description="the field holding the problem")
    answer_field: str = Field(
        "answer", description="the reference: a number, or a worked answer ending in it"
    )
    formula_field: str = Field(
        "formula", description="an arithmetic reference formula, when the item has one"
    )
    tolerance: float = Field(0.01, gt=0, lt=1, description="relative tolerance")
    tools: list[Literal["finance", "code"]] = Field(
        default_factory=list,
        description="answer with DomainLM's toolsets run for the model (local models)",
    )


class ToolCallTask(_Task):
    """Given tools and a request, the model's first call against the gold call."""

    type: Literal["toolcall"]
    source: Literal["auto", "toolalpaca", "conversation"] = Field(
        "auto",
        description="toolalpaca: ToolAlpaca's API list; conversation: Conversation JSONL "
        "whose assistant calls a tool; auto: by the file's shape",
    )
    max_new_tokens: int = Field(128, ge=1, le=8192, description="reply length limit")


class _KbTask(_Task):
    """A task over a knowledge base."""

    kb: str = Field(description="the knowledge base folder (domainlm kb build)")

    def kb_folder(self, folder: Path) -> Path:
        """The KB's folder, or a one-line error saying how to build one."""
        path = Path(self.kb) if Path(self.kb).is_absolute() else folder / self.kb
        if not (path / "kb.json").is_file():
            raise DomainLMError(
                f"task {self.name}: no knowledge base at {path} (build one with `domainlm kb "
                f"build lawkb --source china-law`, then pass tasks.N.kb=lawkb)"
            )
        return path


class CitationTask(_KbTask):
    """Answers checked against the statute KB: the share whose every citation is an
    article that exists and is in force (Lawyer LLaMA's fabricated-citation rate)."""

    type: Literal["citations"]
    prompt_field: str = Field("question", description="the field holding the question")
    instruction_field: str | None = Field(
        "instruction", description="a field put before the question, when present"
    )


class RetrievalTask(_KbTask):
    """The knowledge base's retrieval on qrels ({query, relevant: [{law, article_no}]}):
    recall@1/3/5/10 and reciprocal rank per query (the same for every model: run once)."""

    type: Literal["retrieval"]


class JudgeSettings(_Strict):
    url: str = Field(description="the judge's OpenAI-compatible /v1 URL")
    model: str = Field(description="the judge's model id")
    api_key_env: str | None = Field(None, description="environment variable with its key")
    scale: int = Field(5, ge=2, le=10, description="scores run from 1 to this")
    criteria: dict[str, str] | None = Field(
        None, description="name -> what it judges (default: DISC-Fin-Eval's four)"
    )


class JudgeTask(_Task):
    """Answers scored by an LLM judge on criteria (DISC-Fin-Eval's by default)."""

    type: Literal["judge"]
    judge: JudgeSettings = Field(description="the judge model")
    prompt_field: str = Field("question", description="the field holding the question")
    instruction_field: str | None = Field(
        "instruction", description="a field put before the question, when present"
    )
    reference_field: str | None = Field(
        "answer", description="a reference answer shown to the judge, when present"
    )


Task = Annotated[
    ExamTask | TextTask | ComputeTask | ToolCallTask | CitationTask | RetrievalTask | JudgeTask,
    Field(discriminator="type"),
]


class Suite(_Strict):
    name: str = Field(description="the suite's name")
    description: str = Field("", description="what it measures, for the report")
    models: list[str] = Field(
        default_factory=lambda: ["base"], description="default models (--models overrides)"
    )
    tasks: list[Task] = Field(min_length=1, description="the tasks, run in order")
    seed: int = Field(0, description="seed for few-shot choice and bootstrap intervals")
    folder: Path = Field(Path("."), exclude=True, description="(set from the file's place)")

    @field_validator("tasks")
    @classmethod
    def _unique(cls, tasks: list[Any]) -> list[Any]:
        names = [t.name for t in tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"task names must differ: {', '.join(twice)}")
        return tasks


def load_suite(path: Path, overrides: list[str] | None = None) -> Suite:
    """The suite in `path` with `a.b=value` overrides (`tasks.0.limit=5`).

    Raises:
        DomainLMError: an unreadable file, an unknown task type or key, a bad value.
    """
    raw = read_yaml(path, "eval suite", "recipes/eval/finance.yaml")
    if not isinstance(raw, dict):
        raise DomainLMError(f"{path}: expected a mapping with name and tasks")
    for item in overrides or []:
        apply_override(raw, item, example="tasks.0.limit=5")
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        types = "exam, text, computation, toolcall, citations, retrieval, judge"
        message = first_error(exc, {"union_tag_invalid": f"unknown task type ({types})"})
        raise DomainLMError(f"{path}: {message}") from None
    suite.folder = path.resolve().parent
    return suite
