"""Statute citations in free text: find them and resolve their law.

Forms read, in running text as answers write them: 《中华人民共和国民法典》第五百八十六条,
《民法典》第586条, 民法典第五百八十六条, 依据劳动合同法第八十五条规定, 刑法第一百三十三条之一,
刑法第二十条第二款 (款 and 项), lists that share a law (《民法典》第五百八十六条、第五百八十七条,
民法典第586、587条), ranges (第十条至第十五条, 第10-15条), 《民法典》合同编第五百七十七条,
本法/该法 after a law has been named, and a 第N条 that opens a sentence right after a citation
(the "法律依据：《X》第A条……。第B条……" layout). Full-width digits, traditional characters
(第五百八十六條) and spaces (第 586 条) are read too.

Laws are recognised by every name the knowledge base holds, its short forms (without
中华人民共和国, 关于…的决定 without the issuing body), the laws its statutes say were
repealed (合同法), and a few abbreviations lawyers write (民诉法). A name in 《》 or after
依据/根据/按照… that the KB does not know is kept as written, so its citation is reported as
one that cannot be checked rather than dropped. What each citation means is decided by
`kb.verdicts`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from domainlm.kb.numerals import NUMERAL, parse_number

if TYPE_CHECKING:
    from domainlm.kb.base import KnowledgeBase

_N = NUMERAL
_LIST_SEP = r"\s*(?:、|，|,|和|及|与|或者|或)\s*"
_RANGE_SEP = r"\s*(?:至|到|~|～|—|－|-)\s*"
_ARTICLE = re.compile(
    rf"第\s*(?P<nums>{_N}(?:(?:{_LIST_SEP}|{_RANGE_SEP})第?\s*{_N})*)\s*条"
    rf"(?:\s*之\s*(?P<sub>{_N}))?"
    rf"(?:{_RANGE_SEP}第\s*(?P<last>{_N})\s*条(?:\s*之\s*(?P<last_sub>{_N}))?)?"
    rf"(?:\s*第\s*(?P<para>{_N})\s*款)?(?:\s*第\s*(?P<item>{_N})\s*项)?"
)
_SPLIT = re.compile(rf"(?P<sep>{_LIST_SEP}|{_RANGE_SEP})第?\s*")
_IS_RANGE = re.compile(rf"^{_RANGE_SEP}$")
#: A part of a code between its name and the article: 《民法典》合同编第五百七十七条.
_PART = re.compile(
    r"(?:第[一二三四五六七八九十]+编|[\u4e00-\u9fff]{1,6}编)(?:第[一二三四五六七八九十]+分编)?\s*$"
)
_BOOK = re.compile(r"《([^《》]{1,80})》\s*$")
_SAME_LAW = ("本法", "该法", "同法", "此法")
_SAME_RULES = re.compile(r"本(?:条例|规定|办法|细则|解释|决定|规则)\s*$")
_OWN_RULES = re.compile(r"本(条例|规定|办法|细则|解释|决定|规则|法)")
#: Markup that answers copied from web pages carry: <span>《民法典》</span>第一千零六十四条.
_TAG = re.compile(r"</?[a-zA-Z][^<>\n]{0,60}>")
_LIST_GLUE = re.compile(r"^\s*(?:[、，,和及与或]|以及|或者|和第)\s*$")
_CLAUSE_START = re.compile(r"(?:^|[。；;：:\n])\s*$")
_TRIGGERS = ("依据", "根据", "依照", "按照", "违反", "参照", "适用", "援引", "对照")
_UNKNOWN_NAME = re.compile(
    r"^[\u4e00-\u9fff（）]{2,40}?(?:法典|法|条例|规定|办法|细则|解释|决定|规则)$"
)
#: How far back a sentence-opening 第N条 may take the law of the previous citation.
CARRY_CHARS = 1000
_WIDTH = str.maketrans("０１２３４５６７８９　", "0123456789 ")


@dataclass
class Citation:
    """One citation found in a text, and what the knowledge base says of it."""

    text: str
    start: int
    end: int
    law_written: str | None
    law: str | None
    article: int
    sub: int = 0
    last: int | None = None  # 第A条至第B条: B
    last_sub: int = 0
    paragraph: int | None = None
    item: int | None = None
    #: How the law was found: "named", "same_law" (本法), "list" or "carried" (a 第N条
    #: opening a sentence after a citation of that law).
    via: str = "named"
    verdict: str = ""
    detail: str = ""
    article_text: str = ""
    #: Share of the wording of the text after the citation found in the article, when that
    #: text reads as a quote of it (see `kb.quotes`).
    quote_overlap: float | None = None
    notes: list[str] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """第一百三十三条之一 (or 第十条至第十五条)."""
        from domainlm.kb.numerals import article_label

        text = article_label(self.article, self.sub)
        if self.last is not None:
            text += "至" + article_label(self.last, self.last_sub)
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _converter() -> Any:
    try:
        import opencc
    except ImportError:  # traditional characters then read only where they match
        return None
    return opencc.OpenCC("t2s")


def normalise(text: str) -> str:
    """Simplified characters and ASCII digits, with every character kept in place (offsets
    into the result are offsets into `text`)."""
    text = text.translate(_WIDTH)
    if "<" in text:  # tags become spaces of the same length: offsets stay put
        text = _TAG.sub(lambda m: " " * len(m.group()), text)
    converter = _converter()
    if converter is not None and not text.isascii():
        simplified = converter.convert(text)
        if len(simplified) == len(text):
            return str(simplified)
    return text.replace("條", "条").replace("項", "项")


def extract(text: str, kb: KnowledgeBase) -> list[Citation]:
    """Every article citation in `text`, with its law resolved where the KB knows it."""
    plain = normalise(text)
    citations: list[Citation] = []
    last_end = 0
    inside_names = kb.laws.spans_of_citing_names(plain)
    for match in _ARTICLE.finditer(plain):
        if any(start <= match.start() < end for start, end in inside_names):
            continue  # 关于《刑事诉讼法》第七十九条第三款的解释 is a name, not a citation
        numbers = _numbers(match.group("nums"))
        if not numbers:
            continue
        found = _law_of(plain, match.start(), last_end, citations, kb)
        if found is None:
            continue  # 第N条 with no law: nothing to check it against
        written, law, start, via = found
        sub = _number(match.group("sub"))
        para, item = _maybe(match.group("para")), _maybe(match.group("item"))
        for index, (number, last) in enumerate(numbers):
            final = index == len(numbers) - 1
            if final and match.group("last"):
                last = parse_number(match.group("last"))
            citations.append(
                Citation(
                    text=text[start : match.end()],
                    start=start,
                    end=match.end(),
                    law_written=written,
                    law=law,
                    article=number,
                    sub=sub if final else 0,
                    last=last,
                    last_sub=_number(match.group("last_sub")) if final else 0,
                    paragraph=para if final else None,
                    item=item if final else None,
                    via=via,
                )
            )
        last_end = match.end()
    return citations


def _numbers(inner: str) -> list[tuple[int, int | None]]:
    """(number, range end) pairs of "586、587" / "10-15" / "十至十五"."""
    parts = _SPLIT.split(inner)
    out: list[tuple[int, int | None]] = []
    pending_range = False
    for index in range(0, len(parts), 2):
        number = parse_number(parts[index])
        if number is None:
            return []
        if pending_range and out:
            out[-1] = (out[-1][0], number)
        else:
            out.append((number, None))
        separator = parts[index + 1] if index + 1 < len(parts) else ""
        pending_range = bool(_IS_RANGE.match(separator))
    return out


def _number(value: str | None) -> int:
    return (parse_number(value) or 0) if value else 0


def _maybe(value: str | None) -> int | None:
    return parse_number(value) if value else None


def _law_of(
    text: str, at: int, last_end: int, previous: list[Citation], kb: KnowledgeBase
) -> tuple[str | None, str | None, int, str] | None:
    """(law as written, law in the KB, where the citation starts, how) for the article
    reference at `at`; None when no law can be told."""
    head = text[:at].rstrip()
    if head.endswith("第"):  # 《户口登记条例》第第五条: a doubled 第 is a typo, not a word
        head = head[:-1].rstrip()
    part = _PART.search(head)
    if part:
        head = head[: part.start()].rstrip()
    if head.endswith(("》", "〉")):
        # A name holding a name: 《关于〈中华人民共和国刑法〉有关信用卡规定的解释》.
        nested = kb.laws.ending_at(head, len(head) - 1)
        if nested and head[nested[1] - 1 : nested[1]] in ("《", "〈"):
            return head[nested[1] : len(head) - 1], nested[0], nested[1] - 1, "named"
    book = _BOOK.search(head)
    if book:
        written = book.group(1)
        return written, kb.laws.resolve(written), book.start(), "named"
    found = kb.laws.ending_at(head, len(head))
    if found:
        law, start = found
        return text[start : len(head)], law, start, "named"
    last = previous[-1] if previous else None
    before = text[last_end:at]
    glued = last is not None and last.end == last_end and _LIST_GLUE.match(before)
    if last is not None and (head.endswith(_SAME_LAW) or glued):
        return last.law_written, last.law, at, "same_law" if head.endswith(_SAME_LAW) else "list"
    if _SAME_RULES.search(head):
        if last is not None and last.law_written and _same_kind(head, last.law_written):
            return last.law_written, last.law, at, "same_law"
        return None
    unknown = _unknown_name(head)
    if unknown is not None:
        return unknown, None, len(head) - len(unknown), "named"
    if (
        last is not None
        and at - last.end <= CARRY_CHARS
        and _CLAUSE_START.search(head)
        and _may_carry(text[last.end : at], last, kb)
    ):
        return last.law_written, last.law, at, "carried"
    return None


def _may_carry(between: str, last: Citation, kb: KnowledgeBase) -> bool:
    """Whether a sentence-opening 第N条 still speaks of the law cited before it: no other
    title or law name in between, and 本条例/本规定… only where the cited law is one."""
    if "《" in between or kb.laws.mentioned(between):
        return False
    written = (last.law_written or "").rstrip("》")
    return all(written.endswith(kind) for kind in _OWN_RULES.findall(between))


def _same_kind(head: str, law: str) -> bool:
    """本条例 refers back to a 条例, 本规定 to a 规定…"""
    kind = head.rstrip()[-2:]
    return law.rstrip("》").endswith(kind)


def _unknown_name(head: str) -> str | None:
    """A law name the KB does not know, right after 依据/根据/按照… (依据XX条例第五条).

    The earliest trigger of the clause wins: names hold words like 适用 themselves
    (…关于审理民间借贷案件适用法律若干问题的规定)."""
    window = head[-45:]
    for position in range(len(window)):
        for trigger in _TRIGGERS:
            if window.startswith(trigger, position):
                name = window[position + len(trigger) :]
                if _UNKNOWN_NAME.match(name) and not name.startswith("本"):
                    return name
    return None
