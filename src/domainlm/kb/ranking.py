"""What a knowledge base's ranking can fit, fitting it on qrels, and honest numbers for it.

A KB ranks by BM25 over two fields of its chunks, words and character pairs, plus knobs:
the weight of the character field, the weight of the parts jieba's search mode finds
inside a word the statutes use whole, the weight of terms the synonym file adds to a query,
the factor that demotes articles outside a law the query names, how much a candidate gains
from other top candidates of its law and of its chapter, and (with a dense encoder) the
weight of the dense ranking in the fusion. `fit` picks them on a qrels file by coordinate
ascent from the defaults (each knob over its values in turn, kept when MRR@10, then
recall@5, improves; until a round changes nothing); `cross_validate` fits on K-1 folds and
scores the held-out fold, so the number reported is one for questions the fitting did not
see. `kb tune` saves a fitted
ranking in the KB's manifest; `kb eval --folds K` reports the cross-validated numbers.

Users tune their own KBs on their own questions: a number measured on the questions that
chose the knobs says how well they were memorised, not how well the KB will answer the next
question, which is why the CLI prints the cross-validated one next to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from domainlm.errors import DomainLMError
from domainlm.kb.evaluate import KS, Qrel, evaluate

if TYPE_CHECKING:
    from domainlm.kb.base import KnowledgeBase


class Ranking(BaseModel):
    """The fitted part of a KB's ranking (saved in kb.json under `ranking`).

    The defaults sit where two development sets of different kinds (140 LawBench scenario
    questions; 73 hualv.com consultations whose lawyers' answers cite the articles) are
    both within a question or two of their best on a grid of chars x parts x expansion;
    fitting each set alone picks values that swing from fold to fold (see `bench/
    retrieval.py` for the cross-validated numbers). mention is the hand-set value of the
    first KBs; the dense weight was set with the multilingual USE encoder (0.25 gave
    recall@3/@10 0.612/0.728 against BM25 alone's 0.599/0.714; at 0.5 and 1.0 every k
    fell). A stronger (domain) encoder deserves a higher weight: fit it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    chars: float = Field(
        1.0, ge=0, le=4, description="Weight of the character-pair field beside the words."
    )
    parts: float = Field(
        0.5, ge=0, le=1, description="Weight of the shorter words inside a query word that "
        "the statutes use whole (个人独资企业's 个人, 独资, 企业); 1 counts them as words."
    )  # fmt: skip
    specific: float = Field(
        1.0, ge=0, le=4, description="Power of a query term's specificity to the corpus "
        "(its share there against its share of general Chinese) that scales its weight."
    )  # fmt: skip
    expansion: float = Field(
        1.0, ge=0, le=1, description="Weight of the terms the synonym file adds to a query."
    )
    mention: float = Field(
        0.6, ge=0, le=1, description="Score factor of articles outside a law the query names."
    )
    dense: float = Field(
        0.25, ge=0, le=4, description="Weight of the dense ranking in the fusion (dense KBs)."
    )
    law_votes: float = Field(
        0.0, ge=0, le=4, description="Boost of a candidate by the share of the top 20 that "
        "come from its law (agreement between candidates)."
    )  # fmt: skip
    chapter_votes: float = Field(
        0.0, ge=0, le=4, description="Boost of a candidate by the share of the top 20 that "
        "come from its chapter (a document's heading)."
    )  # fmt: skip


#: The values `fit` tries for each knob.
GRID: dict[str, tuple[float, ...]] = {
    "chars": (0.0, 0.5, 1.0, 2.0),
    "parts": (0.0, 0.25, 0.5, 1.0),
    "specific": (0.0, 1.0, 2.0, 3.0),
    "expansion": (0.0, 0.5, 1.0),
    "mention": (0.6, 0.3, 1.0),
    "law_votes": (0.0, 0.5, 1.0),
    "chapter_votes": (0.0, 0.5, 1.0),
    "dense": (0.25, 0.5, 1.0, 0.0),
}

Searcher = Callable[[str, int], list[tuple[str | None, int | None]]]


def searcher(
    kb: KnowledgeBase,
    ranking: Ranking,
    current_only: bool = True,
    reranker: Any = None,
    rewriter: Any = None,
) -> Searcher:
    def search(query: str, k: int) -> list[tuple[str | None, int | None]]:
        hits = kb.search(
            query, k, current_only=current_only, ranking=ranking, reranker=reranker,
            rewriter=rewriter,
        )  # fmt: skip
        return [(c.law, c.article_num) for c in hits]

    return search


def knobs(kb: KnowledgeBase) -> list[str]:
    """The knobs `fit` sets for this KB (the dense weight only where it has dense vectors)."""
    return [n for n in GRID if n != "dense" or kb.dense is not None]


#: Rounds of coordinate ascent at most (each tries every value of every knob once).
ROUNDS = 3


def _objective(result: dict[str, Any]) -> tuple[float, float]:
    return (round(result["mrr@10"], 9), round(result["recall@5"], 9))


def fit(
    kb: KnowledgeBase, qrels: list[Qrel], progress: Callable[[int, int], None] | None = None
) -> tuple[Ranking, dict[str, Any]]:
    """The best ranking coordinate ascent finds on `qrels`, and its (in-sample) numbers.

    A full grid of seven knobs is thousands of rankings; one knob at a time from the
    defaults, a few rounds, is a few dozen (a local optimum: every single change from it
    is no better).
    """
    if not qrels:
        raise DomainLMError("no queries to fit the ranking on")
    names = knobs(kb)
    total = ROUNDS * sum(len(GRID[n]) for n in names)
    seen: dict[Ranking, dict[str, Any]] = {}

    def score(ranking: Ranking) -> dict[str, Any]:
        if ranking not in seen:
            seen[ranking] = evaluate(qrels, searcher(kb, ranking), kb.laws.resolve)
        return seen[ranking]

    best = Ranking()
    done = 0
    for _ in range(ROUNDS):
        start = best
        for name in names:
            for value in GRID[name]:
                trial = best.model_copy(update={name: value})
                if _objective(score(trial)) > _objective(score(best)):
                    best = trial
                done += 1
                if progress:
                    progress(done, total)
        if best == start:
            break
    if progress:
        progress(total, total)
    return best, score(best)


def folds_of(qrels: list[Qrel], k: int, seed: int = 0) -> list[list[Qrel]]:
    """`qrels` shuffled (seeded) and dealt into `k` folds of near-equal size."""
    if k < 2:
        raise DomainLMError(f"--folds {k}: cross-validation needs at least 2 folds")
    if k > len(qrels):
        raise DomainLMError(f"--folds {k}: more folds than the {len(qrels)} queries")
    order = list(qrels)
    random.Random(seed).shuffle(order)
    return [order[i::k] for i in range(k)]


def cross_validate(
    kb: KnowledgeBase,
    qrels: list[Qrel],
    k: int,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Per fold: the ranking fitted on the other folds and its numbers on this one; pooled:
    the numbers over every held-out query (each query scored once, by a ranking that did
    not see it). `shipped` is the KB's own ranking on the same queries, for comparison."""
    folds = folds_of(qrels, k, seed)
    grid = ROUNDS * sum(len(GRID[n]) for n in knobs(kb))
    per_fold = []
    ranks: list[dict[str, Any]] = []
    for index, held_out in enumerate(folds):
        rest = [q for j, fold in enumerate(folds) if j != index for q in fold]

        def step(done: int, total: int, index: int = index) -> None:
            if progress:
                progress(index * grid + done, k * grid)

        ranking, _ = fit(kb, rest, step)
        result = evaluate(held_out, searcher(kb, ranking), kb.laws.resolve)
        ranks.append(result)
        per_fold.append({"fold": index + 1, "ranking": ranking.model_dump(), **_numbers(result)})
    pooled = _pool(ranks)
    shipped = _numbers(evaluate(qrels, searcher(kb, kb.ranking), kb.laws.resolve))
    return {"folds": per_fold, "pooled": pooled, "shipped": shipped, "knobs": knobs(kb),
            "shipped_ranking": kb.ranking.model_dump(), "seed": seed}  # fmt: skip


def _numbers(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "misses"}


def _pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Query-weighted means of per-fold results (recall and MRR are means over queries)."""
    total = sum(r["queries"] for r in results)
    pooled: dict[str, Any] = {"queries": total}
    for key in [f"recall@{k}" for k in KS] + ["mrr@10"]:
        pooled[key] = sum(r[key] * r["queries"] for r in results) / total
    return pooled
