"""The typed synth recipe: which generators run over which sources, with which teacher,
and which checks a row must pass. YAML plus dotted `key=value` overrides.

    # domainlm synth recipes/synth/law.yaml
    name: law
    kb: ../../demo-out/lawkb
    teacher: {url: http://127.0.0.1:8000/v1, model: base}
    generators:
      - {type: statute_qa, laws: [民法典], limit: 200}
      - {type: document_qa, documents: ../../examples/docs}

Paths written in the file are relative to its folder; unknown keys are errors naming
their dotted path, as in training recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from domainlm.errors import DomainLMError, first_error
from domainlm.io import read_yaml
from domainlm.train.recipe import apply_override


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Strict):
    """What the teacher costs, for the run's cost line (0: free, e.g. your own server)."""

    input: float = Field(0.0, ge=0, description="price per million prompt tokens")
    output: float = Field(0.0, ge=0, description="price per million completion tokens")


class TeacherSpec(_Strict):
    """An OpenAI-compatible endpoint: a hosted model, your own vLLM, or `domainlm serve`."""

    url: str = Field(description="the endpoint's /v1 URL, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the model id the endpoint serves")
    api_key_env: str = Field(
        "DOMAINLM_TEACHER_API_KEY",
        description="environment variable holding the endpoint's key (never the key itself)",
    )
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0, description="seconds to wait for one answer")
    retries: int = Field(
        4,
        ge=0,
        le=20,
        description="retries of a request met by 429, 5xx, a timeout or a "
        "dropped connection, with exponential backoff (Retry-After honoured)",
    )
    backoff_s: float = Field(1.0, gt=0, description="first backoff; doubles per retry")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature")
    max_tokens: int = Field(1024, ge=16, le=32768, description="longest answer, in tokens")
    format_retries: int = Field(
        1, ge=0, le=5, description="re-asks of an answer that is not in the asked format"
    )
    price: Price = Field(default_factory=Price)


class _Generator(_Strict):
    name: str | None = Field(None, description="the generator's name in rows and the report")
    limit: int | None = Field(None, ge=1, description="at most N items (questions, chunks…)")
    system: str | None = Field(None, description="system prompt of the training rows")

    def label(self) -> str:
        return self.name or str(self.type)  # type: ignore[attr-defined]


class StatuteQA(_Generator):
    """Recitation and lookup pairs from the statute KB, no teacher: "《X》第N条规定了
    什么？" → the article with its status, and the reverse (the text → which article)."""

    type: Literal["statute_qa"]
    laws: list[str] = Field(
        default_factory=list, description="laws to draw from (short names work); default all"
    )
    reverse: bool = Field(True, description="also the text → article direction")
    past_versions: bool = Field(
        False, description="also articles no longer in force, answered with their status"
    )


class DocumentQA(_Generator):
    """DISC-FinLLM's reading comprehension: the teacher writes questions about a chunk,
    then answers each from the chunk alone."""

    type: Literal["document_qa"]
    documents: str | None = Field(
        None,
        description="a KB folder, a folder of files or a file (txt/md/pdf/docx/csv/"
        "jsonl); default: the recipe's kb",
    )
    questions_per_chunk: int = Field(2, ge=1, le=10)
    with_passage: bool = Field(
        True,
        description="the training row shows the passage (reading comprehension); "
        "false: the question alone (closed book)",
    )
    min_chunk_chars: int = Field(80, ge=1, description="shorter chunks are skipped")


class SelfChat(_Generator):
    """DISC-FinLLM's consultations: the teacher plays the user and the expert over a topic
    or a seed post for N turns."""

    type: Literal["self_chat"]
    topics: list[str] = Field(default_factory=list, description="topics or seed posts")
    topics_file: str | None = Field(None, description="one topic or seed post per line")
    turns: int = Field(2, ge=1, le=10, description="user-expert exchanges per conversation")
    role: str = Field("律师", description="who the expert is, in the user's prompt")


class Grounded(_Generator):
    """Lawyer LLaMA's retrieval-grounded answers: a question, the KB's top-k articles mixed
    with unrelated ones, the teacher answers citing them; the row keeps the articles in
    the system prompt exactly as the Assistant renders them."""

    type: Literal["grounded"]
    questions_file: str | None = Field(
        None,
        description="one question a line (or a Q&A file's questions); default: the "
        "teacher writes one from each of `limit` sampled articles (DISC's chain-of-retrieval)",
    )
    laws: list[str] = Field(default_factory=list, description="laws to sample articles from")
    top_k: int = Field(3, ge=1, le=10, description="retrieved articles in the prompt")
    distractors: int = Field(1, ge=0, le=5, description="unrelated articles mixed in")


class ToolUse(_Generator):
    """DISC-FinLLM's computing instructions: the teacher writes a problem and a solution
    that calls the tools; every call is run by DomainLM's tools and the row is kept only
    when each result the teacher stated is the tool's."""

    type: Literal["tool_use"]
    topics: list[str] = Field(
        default_factory=lambda: ["复利终值", "贷款月供", "年化收益率", "投资组合的期望收益"],
        description="what the problems are about",
    )
    per_topic: int = Field(5, ge=1, le=1000, description="problems per topic")
    toolset: Literal["finance"] = Field("finance", description="the tools offered")
    tolerance: float = Field(
        1e-3,
        gt=0,
        le=0.1,
        description="relative difference allowed between a stated result and the tool's (rounding)",
    )


Generator = Annotated[
    StatuteQA | DocumentQA | SelfChat | Grounded | ToolUse, Field(discriminator="type")
]


class Checks(_Strict):
    """What a generated row must pass to be kept (each filter's removals are reported)."""

    citations: Literal["drop", "repair", "keep"] = Field(
        "drop",
        description="rows citing articles that do not exist, are repealed, not in "
        "force or misquoted: dropped, repaired where the KB knows the right article "
        "(else dropped), or kept (counted only)",
    )
    unknown_laws: Literal["keep", "drop"] = Field(
        "keep", description="citations of laws the KB does not hold (not checkable)"
    )
    grounding: Literal["overlap", "judge", "off"] = Field(
        "overlap",
        description="answers from a source chunk must be supported by it: by "
        "character-pair overlap, or by the teacher asked yes/no",
    )
    min_overlap: float = Field(
        0.5,
        ge=0,
        le=1,
        description="overlap: share of the answer's character pairs (words "
        "for Latin text) found in the source",
    )
    dedup: float = Field(
        0.85,
        gt=0,
        le=1,
        description="MinHash Jaccard above which a row is a near-duplicate "
        "of an earlier one (1: exact duplicates only)",
    )
    min_chars: int = Field(8, ge=0, description="shortest answer kept")
    max_chars: int = Field(6000, ge=1, description="longest answer kept")
    language: Literal["zh", "en", "any"] = Field(
        "zh", description="answers must be mostly in this language"
    )
    refusals: bool = Field(True, description="drop answers that refuse or disclaim")
    max_repetition: float = Field(
        0.6,
        gt=0,
        le=1,
        description="drop a turn of 100+ characters whose share of repeated "
        "character 4-grams is above this (a degenerate loop; statute texts stay below 0.52 "
        "in 99.9% of articles)",
    )
    prompt_echo: bool = Field(
        True, description="drop rows whose generated turns copy the teacher's instructions"
    )


class SynthRecipe(_Strict):
    """One synth run: sources, a teacher, generators and checks."""

    name: str = Field(description="the run's name (default output: synth-runs/NAME)")
    kb: str | None = Field(
        None,
        description="the statute KB: source of statute_qa and grounded, and what every "
        "citation is checked against",
    )
    out: str | None = Field(None, description="output folder")
    teacher: TeacherSpec | None = None
    seed: int = Field(0, description="sampling of articles, chunks and distractors")
    generators: list[Generator] = Field(min_length=1)
    checks: Checks = Field(default_factory=Checks)
    folder: Path = Field(Path("."), exclude=True, description="the recipe file's folder")

    @model_validator(mode="after")
    def _consistent(self) -> SynthRecipe:
        names = [g.label() for g in self.generators]
        if len(set(names)) != len(names):
            raise ValueError("two generators share a name: give each a `name`")
        needs = [g.label() for g in self.generators if g.type != "statute_qa"]
        if needs and self.teacher is None:
            raise ValueError(f"generators {', '.join(needs)} need a `teacher`")
        statute = [g.label() for g in self.generators if g.type in ("statute_qa", "grounded")]
        if statute and self.kb is None:
            raise ValueError(f"generators {', '.join(statute)} need a statute `kb`")
        if self.checks.grounding == "judge" and self.teacher is None:
            raise ValueError("checks.grounding: judge needs a `teacher`")
        return self

    def path(self, value: str) -> Path:
        """A path written in the recipe, relative to its folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.folder / path

    def output(self) -> Path:
        return self.path(self.out) if self.out else Path("synth-runs") / self.name


def load_synth_recipe(path: Path, overrides: list[str] | None = None) -> SynthRecipe:
    """The recipe in `path` with `key=value` overrides applied.

    Raises:
        DomainLMError: naming the file and the first field that is wrong.
    """
    data: Any = read_yaml(path, "synth recipe", "recipes/synth/law.yaml")
    if not isinstance(data, dict):
        raise DomainLMError(f"{path}: a synth recipe is a mapping (name:, generators: …)")
    for item in overrides or []:
        apply_override(data, item)
    try:
        return SynthRecipe.model_validate({**data, "folder": path.resolve().parent})
    except ValidationError as exc:
        raise DomainLMError(f"{path}: {first_error(exc)}") from None
