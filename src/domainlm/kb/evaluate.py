"""Retrieval quality on a qrels file: recall@k, MRR@10 and query latency.

A qrels line is `{"query": "...", "relevant": [{"law": "...", "article_no": 586}]}`; a
hit is a returned article of a relevant law (name resolved by the KB) and number.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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
