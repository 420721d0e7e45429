"""Statute citations in free text: find them, resolve them, and say whether they hold.

Forms read: 《中华人民共和国民法典》第五百八十六条, 《民法典》第586条, 民法典第五百八十六条,
刑法第二十条第二款 (and 第N项), lists that share a law (《民法典》第五百八十六条、第五百八十七条)
and 本法/该法 after a law has been named.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from domainlm.kb.numerals import parse_number

if TYPE_CHECKING:
    from domainlm.kb.base import KnowledgeBase

_NUM = r"[零〇一二两三四五六七八九十百千万\d０-９]+"
_ARTICLE = re.compile(
    rf"第\s*(?P<article>{_NUM})\s*条(?:之(?P<sub>{_NUM}))?"
    rf"(?:\s*第\s*(?P<para>{_NUM})\s*款)?(?:\s*第\s*(?P<item>{_NUM})\s*项)?"
)
_BOOK = re.compile(r"《([^《》]{1,40})》\s*$")
_SAME_LAW_WORDS = ("本法", "该法", "同法", "此法")
_LIST_GLUE = re.compile(r"^\s*(?:[、，,和及与或]|以及|或者|和第)\s*$")

#: Verdicts of `verify`.
CURRENT, AMENDED, REPEALED, NO_ARTICLE, NO_LAW = (
    "current", "amended", "repealed", "no_such_article", "no_such_law",
)  # fmt: skip


@dataclass
class Citation:
    """One citation found in a text, and what the knowledge base says of it."""

    text: str
    start: int
    end: int
    law_written: str | None
    law: str | None
    article: int
    paragraph: int | None = None
    item: int | None = None
    verdict: str = ""
    detail: str = ""
    article_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extract(text: str, kb: KnowledgeBase) -> list[Citation]:
    """Every article citation in `text`, with its law resolved where the KB knows it."""
    citations: list[Citation] = []
    previous_law: tuple[str | None, str | None] | None = None  # (written, resolved)
    last_end = 0
    for match in _ARTICLE.finditer(text):
        number = parse_number(match.group("article"))
        if number is None:
            continue
        before = text[last_end : match.start()]
        written, law, start = _law_before(text, match.start(), before, kb)
        if (
            written is None
            and previous_law is not None
            and (_LIST_GLUE.match(before) or before.rstrip().endswith(_SAME_LAW_WORDS))
        ):
            written, law = previous_law
            start = match.start()
        if written is None:
            last_end = match.end()
            continue  # 第N条 with no law: nothing to check it against
        citation = Citation(
            text=text[start : match.end()],
            start=start,
            end=match.end(),
            law_written=written,
            law=law,
            article=number,
            paragraph=_maybe(match.group("para")),
            item=_maybe(match.group("item")),
        )
        citations.append(citation)
        previous_law = (written, law)
        last_end = match.end()
    return citations


def _maybe(value: str | None) -> int | None:
    return parse_number(value) if value else None


def _law_before(
    text: str, at: int, before: str, kb: KnowledgeBase
) -> tuple[str | None, str | None, int]:
    head = text[:at].rstrip()
    book = _BOOK.search(head)
    if book:
        written = book.group(1)
        return written, kb.laws.resolve(written), book.start()
    if head.endswith(_SAME_LAW_WORDS):
        return None, None, at
    found = kb.laws.ending_at(head, len(head))
    if found:
        law, start = found
        return text[start : len(head)], law, start
    return None, None, at


def verify(text: str, kb: KnowledgeBase) -> list[Citation]:
    """The citations of `text`, each with a verdict: current, amended, repealed,
    no_such_article or no_such_law, and the text of the article when it exists."""
    citations = extract(text, kb)
    for citation in citations:
        _judge(citation, kb)
    return citations


def _judge(citation: Citation, kb: KnowledgeBase) -> None:
    if citation.law is None:
        citation.verdict = NO_LAW
        citation.detail = f"no law named {citation.law_written!r} in the knowledge base"
        return
    versions = kb.store.articles(citation.law, citation.article)
    if not versions:
        last = kb.store.max_article(citation.law)
        citation.verdict = NO_ARTICLE
        citation.detail = f"{citation.law} has articles 1-{last}" if last else ""
        return
    best = versions[0]
    citation.article_text = best.text
    status = best.status or ""
    if status == "现行有效":
        citation.verdict = CURRENT
    elif status == "已被修改":
        citation.verdict = AMENDED
        citation.detail = "the text is in force, but the law has been amended: check the amendments"
    elif status == "已废止":
        citation.verdict = REPEALED
        citation.detail = "the article (or its law) has been repealed"
    else:
        citation.verdict = AMENDED
        citation.detail = f"only in a superseded version ({status}, {best.version_date or '?'})"
