"""Does the text written after a citation quote the cited article?

Answers often cite and quote in one breath ("法律依据：《公司法》第一百四十六条有下列情形之一的，
不得担任公司的董事……"). A model trained on older text quotes the right words under a number
that a revision has since given to another article, or quotes words no article has. When
the text after a citation reads like a quote, it is compared with the article, and when it
matches another article (or another version) much better, `kb.verdicts` says so.

Overlap is the share of the quote's character bigrams found in the article: a verbatim quote
scores near 1, a paraphrase about 0.3-0.6, unrelated text below 0.2.
"""

from __future__ import annotations

import re

#: Text that follows a citation without quoting it: 《民法典》第586条规定，… / 的规定 / 、第587条
_NOT_A_QUOTE = re.compile(r"^(?:的?规定|之规定|明确|中|的|之|第|[、，,。；;）)和或及也还]|以及|等)")
#: A quote announced: "：" or an opening quotation mark, after 规定 or not (第586条规定：…).
_EXPLICIT = re.compile(r"^\s*(?:的?规定|明确规定|规定如下)?\s*[：:“\"「『]")
_WORD = re.compile(r"[\w\u4e00-\u9fff]")
#: A quote shorter than this (in characters that count) is not judged.
MIN_QUOTE = 15
MAX_QUOTE = 300


def quoted_after(text: str, end: int, stop: int) -> str:
    """The quote-like text between a citation's end and `stop` (the next citation), or ""."""
    segment = text[end:stop]
    explicit = _EXPLICIT.match(segment)
    if not explicit and _NOT_A_QUOTE.match(segment.lstrip()):
        return ""
    if explicit:
        segment = segment[explicit.end() :]
    segment = segment.lstrip(' \t：:“"「『')
    segment = re.split(r"\n\s*\n", segment, maxsplit=1)[0][:MAX_QUOTE]
    return segment if len(_WORD.findall(segment)) >= MIN_QUOTE else ""


def overlap(quote: str, article: str) -> float:
    """Share of the quote's bigrams (over as many characters as the article has) that the
    article holds."""
    article_chars = "".join(_WORD.findall(article))
    quote_chars = "".join(_WORD.findall(quote))[: len(article_chars) + 10]
    wanted = {quote_chars[i : i + 2] for i in range(len(quote_chars) - 1)}
    if not wanted:
        return 0.0
    held = {article_chars[i : i + 2] for i in range(len(article_chars) - 1)}
    return len(wanted & held) / len(wanted)
