"""Retrieval helped by a language model: query rewriting and re-ranking.

In: a question and a model that can read Chinese (a local folder such as
Qwen2.5-7B-Instruct, or any `eval.models.Models`, local or an OpenAI-compatible endpoint for
rewriting). Out: `ModelRewriter` turns an everyday question into the words a statute would
use, which `KnowledgeBase.search(rewriter=...)` scores beside the question itself;
`ModelReranker` re-scores the first stage's top candidates by how likely the model finds
"是" (yes) against "否" (no) after asking whether the article answers the question, and plugs
in where a cross-encoder does (`search(reranker=...)`).

Both cost a model call per question (rewriting) or per candidate (re-ranking), so they are
opt-in (`kb search --rewrite MODEL --rerank MODEL`, the same for `kb eval`); the default
path stays BM25 alone. The default model (SmolLM2-135M, English only) cannot do either
usefully; the classes are tested with the tiny model for their mechanics.
"""

from __future__ import annotations

import re
from typing import Any

from domainlm.errors import DomainLMError

REWRITE_SYSTEM = (
    "你是法律检索助手。把用户的问题改写成中国法律条文里会出现的词语：可能适用的法律名称、"
    "法律术语和关键概念。只输出这些词语，用空格分开，不要解释。"
)
RERANK_PROMPT = (
    "问题：{query}\n法条：{passage}\n这条法条是否回答了这个问题？请回答“是”或“否”。\n回答："
)
#: Characters of a candidate the re-ranker reads (articles past this are cut).
RERANK_CHARS = 400
MAX_REWRITE_TOKENS = 64
_LIST_MARK = re.compile(r"^\s*(?:\d+[.、)）]|[-*•])\s*", re.MULTILINE)
_NOISE = re.compile(r"[\s,，、；;。:：\"“”'‘’()（）\[\]【】*#-]+")


class ModelRewriter:
    """Statute words for a question, written by `model` of `models` (greedy)."""

    def __init__(self, models: Any, model: str = "base", max_new_tokens: int = MAX_REWRITE_TOKENS):
        self.models, self.model, self.max_new_tokens = models, model, max_new_tokens

    def rewrite(self, queries: list[str]) -> list[str]:
        """One rewrite per query; "" where the model failed or wrote nothing usable (the
        question is then searched as it is)."""
        from domainlm.eval.models import Chat

        jobs = [
            Chat(
                self.model,
                [{"role": "system", "content": REWRITE_SYSTEM}, {"role": "user", "content": q}],
                self.max_new_tokens,
            )
            for q in queries
        ]
        out = [""] * len(queries)
        for index, reply in self.models.generate(jobs):
            if not isinstance(reply, Exception):
                out[index] = clean_rewrite(reply.text)
        return out


def clean_rewrite(text: str) -> str:
    """The model's words as a query: punctuation and list markup become spaces, and a
    rewrite is capped at 200 characters (a model that rambles adds noise, not words)."""
    return " ".join(w for w in _NOISE.split(_LIST_MARK.sub("", text)) if w)[:200]


class ModelReranker:
    """Re-scores (question, passage) pairs with a causal language model of `models`:
    log P(是) - log P(否) after `RERANK_PROMPT`. Needs prompt log-probabilities, so local
    models only (`eval.models.LocalModels`)."""

    def __init__(self, models: Any, model: str = "base"):
        self.models, self.model = models, model

    def scores(self, query: str, passages: list[str]) -> list[float]:
        from domainlm.eval.models import Choice

        if not passages:
            return []
        jobs = [
            Choice(
                self.model,
                RERANK_PROMPT.format(query=query, passage=p[:RERANK_CHARS]),
                ["是", "否"],
            )
            for p in passages
        ]
        return [yes - no for yes, no in self.models.loglik(jobs)]


def local_language_models(model: str) -> Any:
    """A local base model (folder, .gguf, `default`, `tiny`) for rewriting and re-ranking.

    Raises:
        DomainLMError: when `model` cannot be loaded.
    """
    from domainlm.eval.evaluate import local_models

    return local_models(model, None)


def is_cross_encoder(spec: str) -> bool:
    """Whether `spec` names a cross-encoder folder (a sequence-classification model), as
    opposed to a causal language model for `ModelReranker`."""
    import json
    from pathlib import Path

    config = Path(spec).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise DomainLMError(f"{config}: unreadable ({exc})") from None
    return any("SequenceClassification" in a for a in architectures)
