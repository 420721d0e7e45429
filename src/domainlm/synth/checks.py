"""The checks a generated row must pass, in order, each counting what it removed.

1. flags set while generating (a tool result that differs, a judge's "not supported", a
   grounded answer citing an unrelated article that was mixed into its prompt);
2. length, repetition (a degenerate loop), an echo of the teacher's own instructions,
   language and refusals of the generated turns;
5. grounding: an answer made from a source passage shares at least `min_overlap` of its
   character pairs (words, for Latin text) with the passage;
6. citations: every statute citation in an assistant turn is verified against the KB;
   a row citing an article that does not exist, is repealed, not in force, superseded or
   misquoted is dropped, or repaired where the KB names the one right article and the
   repaired row then verifies;
7. near-duplicates: MinHash (datasketch) over character 3-grams of the row's text, an LSH
   index at the `dedup` Jaccard threshold; the first row of a cluster (in item order) stays.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domainlm.kb.numerals import article_label
from domainlm.kb.text import char_bigrams
from domainlm.synth.recipe import Checks
from domainlm.synth.teacher import excerpt

FILTERS = (
    "tool_results", "distractor", "length", "repetition", "prompt_echo", "language", "refusal",
    "grounding", "citations", "dedup",
)  # fmt: skip
EXAMPLES = 3
_CJK = re.compile(r"[\u3400-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"[a-z0-9]+")
_REFUSAL = re.compile(
    r"作为(?:一个|一名)?(?:AI|人工智能|语言模型|AI助手)|我(?:无法|不能)(?:回答|提供|帮助)|"
    r"抱歉|对不起，我|很遗憾，我|I'm sorry|I am sorry|I cannot|I can't|As an AI",
    re.I,
)
_ARTICLE = re.compile(
    r"第[0-9０-９零〇一二两三四五六七八九十百千]+条(?:之[一二三四五六七八九十]+)?"
)
_BAD = ("no_such_article", "repealed", "not_in_force", "superseded", "misquoted")
_REPAIRABLE = ("misquoted", "superseded")


@dataclass
class Tally:
    """What each filter removed (with a few examples), and the citations repaired."""

    removed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    repaired: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)

    def drop(self, check: str, item: dict[str, Any], reason: str) -> None:
        self.removed[check] += 1
        shown = self.examples.setdefault(check, [])
        if len(shown) < EXAMPLES:
            shown.append({"item": item["record"]["meta"].get("item", ""),
                          "question": _tail(_question(item)), "reason": reason})  # fmt: skip


def _question(item: dict[str, Any]) -> str:
    messages = item["record"]["messages"]
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def _answers(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in item["record"]["messages"] if m["role"] == "assistant" and m["content"]]


def _tail(text: str, size: int = 100) -> str:
    """The end of a user turn (where the question is, after any passage)."""
    text = " ".join(text.split())
    return text if len(text) <= size else "…" + text[-size:]


def language_of(text: str) -> str:
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk + latin == 0:
        return "any"
    return "zh" if cjk >= 0.3 * (cjk + latin) else "en"


def overlap(answer: str, source: str) -> float:
    """Share of the answer's character pairs (or words, for Latin text) in the source."""
    if _CJK.search(answer):
        grams, known = set(char_bigrams(answer)), set(char_bigrams(source))
    else:
        grams, known = set(_WORD.findall(answer.lower())), set(_WORD.findall(source.lower()))
    return len(grams & known) / len(grams) if grams else 1.0


def repetition(text: str, size: int = 4) -> float:
    """Share of a text's character `size`-grams that repeat an earlier one (Gopher's
    repeated n-gram heuristic on characters, which Chinese needs)."""
    text = "".join(text.split())
    grams = [text[i : i + size] for i in range(len(text) - size + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


#: Characters of a prompt phrase that, found in a generated turn, make it an echo.
ECHO_CHARS = 8


@functools.cache
def _instructions() -> frozenset[str]:
    """Every ECHO_CHARS-character window of the fixed phrases of the teacher's prompts
    (the text between fields and sentence marks), which no generated turn should repeat."""
    from domainlm.engine.assistant import ARTICLES_HEADER
    from domainlm.synth.prompts import PROMPTS

    windows: set[str] = set()
    for template in [*PROMPTS.values(), ARTICLES_HEADER]:
        for part in re.split(r"\{[^{}]*\}|[。；！？\n：:“”\"]", template):
            part = part.strip()
            if len(_CJK.findall(part)) >= ECHO_CHARS:
                windows.update(part[i : i + ECHO_CHARS] for i in range(len(part) - ECHO_CHARS + 1))
    return frozenset(windows)


def echo_of_prompt(text: str) -> str | None:
    """A piece of the teacher's instructions repeated in `text`, or None."""
    known = _instructions()
    return next(
        (text[i : i + ECHO_CHARS] for i in range(len(text) - ECHO_CHARS + 1)
         if text[i : i + ECHO_CHARS] in known),
        None,
    )  # fmt: skip


def _generated(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The turns the teacher wrote: the answers, and the user turns of self-chat and of
    questions the teacher wrote from an article."""
    meta = item["record"]["meta"]
    asked = meta.get("type") == "self_chat" or (meta.get("source") or {}).get("article")
    return [m for m in item["record"]["messages"] if m["content"] and (
        m["role"] == "assistant" or (asked and m["role"] == "user"))]  # fmt: skip


def _text_reason(checks: Checks, item: dict[str, Any]) -> tuple[str, str] | None:
    if not _answers(item):
        return "length", "no answer"
    for message in _generated(item):
        text = message["content"]
        if message["role"] == "assistant" and not checks.min_chars <= len(text) <= checks.max_chars:
            return "length", f"{len(text)} characters (kept: {checks.min_chars}-{checks.max_chars})"
        share = repetition(text)
        if len(text) >= 100 and share > checks.max_repetition:
            return "repetition", f"{share:.0%} of its 4-grams repeat: {excerpt(text, 60)}"
        echo = echo_of_prompt(text) if checks.prompt_echo else None
        if echo:
            return "prompt_echo", f"repeats the prompt's {echo!r}"
        if checks.language != "any" and language_of(text) not in (checks.language, "any"):
            return "language", f"the answer is in {language_of(text)}: {excerpt(text, 60)}"
        found = _REFUSAL.search(text) if checks.refusals else None
        if found:
            return "refusal", f"refuses or disclaims ({found.group(0)})"
    return None


def _grounding_reason(checks: Checks, item: dict[str, Any]) -> str | None:
    source = item.get("source")
    if checks.grounding != "overlap" or not source:
        return None
    share = min(overlap(m["content"], source) for m in _answers(item))
    if share < checks.min_overlap:
        return f"{share:.0%} of the answer is in its passage (at least {checks.min_overlap:.0%})"
    return None


def check_citations(
    kb: Any, item: dict[str, Any], checks: Checks, tally: Tally
) -> tuple[dict[str, Any] | None, str]:
    """The row (repaired where asked and possible) if its citations hold, else None and why."""
    if kb is None:
        return item, ""
    fixed = copy.deepcopy(item) if checks.citations == "repair" else item
    known = {tuple(k) for k in item.get("known", [])}
    for message in _answers(fixed):
        citations = [c for c in kb.verify(message["content"])
                     if (c.law, c.article, c.sub) not in known]  # fmt: skip
        tally.verdicts.update(c.verdict for c in citations)
        bad = [c for c in citations if c.verdict in _BAD]
        if checks.unknown_laws == "drop":
            bad += [c for c in citations if c.verdict == "unknown_law"]
        if not bad or checks.citations == "keep":
            continue
        if checks.citations == "repair" and all(_repairable(c) for c in bad):
            text = message["content"]
            for c in sorted(bad, key=lambda c: -c.start):
                best = c.suggestions[0]
                label = article_label(best["article"], best.get("sub", 0))
                text = text[: c.start] + _ARTICLE.sub(label, c.text, count=1) + text[c.end :]
            if all(c.verdict in ("current", "unknown_law") for c in kb.verify(text)):
                message["content"] = text
                tally.repaired += len(bad)
                continue
        worst = bad[0]
        return None, f"{worst.text}: {worst.verdict}" + (
            f" ({worst.detail})" if worst.detail else ""
        )
    return fixed, ""


def _repairable(citation: Any) -> bool:
    return (
        citation.verdict in _REPAIRABLE
        and len(citation.suggestions) == 1
        and citation.suggestions[0].get("law") == citation.law
        and citation.last is None
    )


def _shingles(text: str, size: int = 3) -> set[bytes]:
    text = re.sub(r"\s+", "", text)
    return {text[i : i + size].encode("utf-8") for i in range(max(1, len(text) - size + 1))}


def deduplicated(
    items: list[dict[str, Any]], threshold: float, on_drop: Callable[[dict[str, Any], str], None]
) -> list[dict[str, Any]]:
    """The items less near-duplicates of earlier ones (`on_drop` hears of each)."""
    from datasketch import MinHash, MinHashLSH

    kept: list[dict[str, Any]] = []
    if threshold >= 1.0:
        seen: dict[str, str] = {}
        for item in items:
            text = _row_text(item)
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            if digest in seen:
                on_drop(item, f"the same text as {seen[digest]}")
            else:
                seen[digest] = item["record"]["meta"].get("item", "")
                kept.append(item)
        return kept
    index = MinHashLSH(threshold=threshold, num_perm=128)
    for number, item in enumerate(items):
        if item.get("distinct"):
            kept.append(item)
            continue
        signature = MinHash(num_perm=128, seed=1)
        signature.update_batch(list(_shingles(_row_text(item))))
        near = index.query(signature)
        if near:
            on_drop(item, f"a near-duplicate of {sorted(near)[0]}")
            continue
        index.insert(f"{item['record']['meta'].get('item', '')}#{number}", signature)
        kept.append(item)
    return kept


def _row_text(item: dict[str, Any]) -> str:
    if item.get("dedup"):
        return str(item["dedup"])
    return "\n".join(m["content"] for m in item["record"]["messages"] if m["role"] != "system")


def apply_checks(
    items: list[dict[str, Any]], checks: Checks, kb: Any
) -> tuple[list[dict[str, Any]], Tally, list[dict[str, Any]]]:
    """(rows kept, what was removed, rows removed with their reasons)."""
    tally = Tally()
    rejected: list[dict[str, Any]] = []

    def drop(check: str, item: dict[str, Any], reason: str) -> None:
        tally.drop(check, item, reason)
        rejected.append({**item["record"], "rejected": {"check": check, "reason": reason}})

    survivors = []
    for item in items:
        flag = next(((k, v) for k, v in item.get("flags", {}).items() if v), None)
        if flag:
            drop(flag[0], item, flag[1])
            continue
        problem = _text_reason(checks, item)
        if problem:
            drop(*problem[:1], item, problem[1])
            continue
        reason = _grounding_reason(checks, item)
        if reason:
            drop("grounding", item, reason)
            continue
        checked, why = check_citations(kb, item, checks, tally)
        if checked is None:
            drop("citations", item, why)
            continue
        survivors.append(checked)
    kept = deduplicated(survivors, checks.dedup, lambda item, why: drop("dedup", item, why))
    return kept, tally, rejected
