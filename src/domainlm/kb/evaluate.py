"""Retrieval quality on a qrels file: recall@k, MRR@10 and query latency.

A qrels line is `{"query": "...", "relevant": [{"law": "...", "article_no": 586}]}`; a
hit is a returned article of a relevant law (name resolved by the KB) and number.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError

KS = (1, 3, 5, 10)

#: A search function: query -> ranked (law, article number) pairs.
Searcher = Callable[[str, int], list[tuple[str | None, int | None]]]


@dataclass
class Qrel:
    query: str
    relevant: set[tuple[str, int]]
    where: str


def read_qrels(path: Path) -> list[Qrel]:
    """Raises DomainLMError naming the line of a bad record."""
    if not path.is_file():
        raise DomainLMError(f"{path}: no such file")
    qrels = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            relevant = {(r["law"], int(r["article_no"])) for r in record["relevant"]}
            qrels.append(Qrel(str(record["query"]), relevant, f"{path}:{number}"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DomainLMError(
                f"{path}:{number}: expected {{query, relevant: [{{law, article_no}}]}} ({exc})"
            ) from None
    if not qrels:
        raise DomainLMError(f"{path}: no queries")
    return qrels


def evaluate(
    qrels: list[Qrel], search: Searcher, normalize: Callable[[str], str | None] = lambda s: s
) -> dict[str, Any]:
    """recall@k (share of queries with a relevant article in the top k), MRR@10, latency."""
    hits = dict.fromkeys(KS, 0)
    reciprocal, latencies, misses = 0.0, [], []
    for qrel in qrels:
        wanted = {(normalize(law), number) for law, number in qrel.relevant}
        started = time.perf_counter()
        results = search(qrel.query, max(KS))
        latencies.append((time.perf_counter() - started) * 1000)
        ranks = [i for i, (law, n) in enumerate(results) if (law, n) in wanted]
        first = ranks[0] if ranks else None
        for k in KS:
            hits[k] += first is not None and first < k
        if first is not None and first < 10:
            reciprocal += 1 / (first + 1)
        else:
            misses.append(qrel.where)
    n = len(qrels)
    latencies.sort()
    return {
        "queries": n,
        **{f"recall@{k}": hits[k] / n for k in KS},
        "mrr@10": reciprocal / n,
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p95": latencies[min(n - 1, round(0.95 * (n - 1)))],
        "misses": misses,
    }


#: The fields `qrels_from_answers` reads when none are named.
QUESTION_FIELDS = ("question", "query", "instruction", "input", "prompt")
ANSWER_FIELDS = ("answer", "reply", "output", "response")


@dataclass
class AnswerQrels:
    """What `qrels_from_answers` made of a Q&A file."""

    rows: list[dict[str, Any]]
    records: int = 0
    without_citation: int = 0
    #: Citations not kept, by verdict (an article whose quoted text is another's, a law
    #: repealed, an article that does not exist, a law the KB does not hold).
    dropped: dict[str, int] = field(default_factory=dict)


def qrels_from_answers(
    kb: Any,
    path: Path,
    question: str | None = None,
    answer: str | None = None,
) -> AnswerQrels:
    """Qrels from Q&A whose answers cite the statute that settles them ("法律依据：《民法典》
    第六百七十五条…"): each question, with the articles its answer cites that the KB finds
    current and, where the answer quotes them, quoted right (a citation whose text is
    another article's, or of a repealed law, says nothing about where the answer is).

    Raises:
        DomainLMError: for an unreadable record or one without the fields.
    """
    from domainlm.data.records import read_records

    questions = (question,) if question else QUESTION_FIELDS
    answers = (answer,) if answer else ANSWER_FIELDS
    report = AnswerQrels(rows=[])
    for record in read_records(path):
        if record.error is not None:
            raise record.error
        data = record.data if isinstance(record.data, dict) else {}
        asked = next((data[f] for f in questions if isinstance(data.get(f), str)), None)
        said = next((data[f] for f in answers if isinstance(data.get(f), str)), None)
        if asked is None or said is None:
            raise DomainLMError(
                f"{record.where}: needs a question ({', '.join(questions)}) and an answer "
                f"({', '.join(answers)}) text field"
            )
        report.records += 1
        relevant: dict[tuple[str, int], None] = {}
        for citation in kb.verify(said, suggest=False):
            if citation.verdict == "current" and citation.law and citation.article:
                relevant[(citation.law, citation.article)] = None
            else:
                report.dropped[citation.verdict] = report.dropped.get(citation.verdict, 0) + 1
        if not relevant or not asked.strip():
            report.without_citation += 1
            continue
        report.rows.append({
            "id": record.where,
            "query": asked.strip(),
            "relevant": [{"law": law, "article_no": number} for law, number in relevant],
        })  # fmt: skip
    if not report.records:
        raise DomainLMError(f"{path}: no records")
    return report
