"""Chinese text for retrieval: tokens (jieba with legal terms kept whole) and chunking."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from importlib import resources

#: Function words and question phrasing that carry no topic.
STOPWORDS = frozenset(
    (  # noqa: SIM905 (a word list reads better as one string)
        "的 了 是 在 和 与 对 于 由 从 被 把 及 或 并 等 请问 我 你 "
        "他 她 它 我们 他们 这 那 个 之 其 什么 怎么 怎样 如何 怎么办 吗 "
        "呢 吧 啊 一下 有关 关于 应该 可以 是否 有没有 如果 因为 所以 但是 "
        "然后 因此 需要 能 能否 会 要 哪些 哪个 哪 根据 规定 法律 条 第 "
        "为 以 及其 也 都 就 还 又 而 则 中 上 下 时 后 前 给 让 向 "
        "将 已 已经 没有 不 有 一个 一些 某 某个 "
    ).split()
)
_KEEP = re.compile(r"[\w\u4e00-\u9fff]")
_RUNS = re.compile(r"[\u4e00-\u9fff]+|[A-Za-z0-9]+")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|\n+")
_LEGAL_TERMS = "legal_terms.txt"
#: Query length past which `Tokenizer.words` cuts without jieba's HMM.
LONG_TEXT = 500


def legal_terms() -> list[str]:
    path = resources.files("domainlm.kb").joinpath("data").joinpath(_LEGAL_TERMS)
    text = path.read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@functools.cache
def synonyms() -> dict[str, list[str]]:
    """Everyday word -> statute terms (data/synonyms.txt)."""
    path = resources.files("domainlm.kb").joinpath("data").joinpath("synonyms.txt")
    table = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            word, *terms = line.split()
            table[word] = terms
    return table


class Tokenizer:
    """jieba in search mode (long words also give their parts), with user words kept whole.

    One jieba instance per Tokenizer, so user words never leak into other users of jieba.
    """

    def __init__(self, user_words: Iterable[str] = ()):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self._jieba = jieba.Tokenizer()
        self._jieba.initialize()
        words = [*legal_terms(), *user_words]
        # jieba's dictionary counts words in general Chinese text: kept before the user
        # words' own counts replace theirs, for `general_share`.
        self._general_total = float(self._jieba.total)
        self._general = {word: self._jieba.FREQ.get(word, 0) for word in words}
        for word in words:
            self._jieba.add_word(word, freq=2000)

    def general_share(self, term: str) -> float:
        """How often `term` occurs in general Chinese (jieba's dictionary counts, add-half
        smoothed): the other side of a term's specificity to a corpus."""
        count = self._general.get(term, self._jieba.FREQ.get(term, 0))
        return (count + 0.5) / self._general_total

    def tokens(self, text: str) -> list[str]:
        return [
            token.lower()
            for token in self._jieba.cut_for_search(text)
            if token.strip() and _KEEP.search(token) and token not in STOPWORDS
        ]

    def words(self, text: str) -> list[tuple[str, list[str]]]:
        """Per word of `text` (jieba's accurate mode): the word and the shorter words
        search mode also gives for it (个人独资企业: 个人, 独资, 企业). `tokens` is every
        word followed by its parts; a query weighs the parts apart from the word.

        Past `LONG_TEXT` characters jieba's HMM (new words from runs of single characters)
        is off: it costs ~20 ms per thousand characters of such runs, and a long pasted
        text has its topic words in the dictionary anyway.
        """
        out = []
        for word in self._jieba.cut(text, HMM=len(text) <= LONG_TEXT):
            word = word.strip().lower()
            if not word or not _KEEP.search(word) or word in STOPWORDS:
                continue
            out.append((word, self._parts(word)))
        return out

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one per KB; words repeat)
    def _parts(self, word: str) -> list[str]:
        """The dictionary words of 2 and 3 characters inside `word`, as jieba's search
        mode finds them (it cuts the accurate mode's words the same way)."""
        freq = self._jieba.FREQ
        parts = []
        for size in (2, 3):
            if len(word) > size:
                parts += [word[i : i + size] for i in range(len(word) - size + 1)
                          if freq.get(word[i : i + size])]  # fmt: skip
        return [p for p in parts if p not in STOPWORDS and _KEEP.search(p)]


def char_bigrams(text: str) -> list[str]:
    """Overlapping character pairs of every run of Chinese characters (a lone character
    stands for itself) and lower-cased runs of letters and digits: the second field of
    the index, which matches phrasings jieba cuts differently in a question and in a
    statute (未按规定 / 未按照规定, 无法偿还 / 不足以清偿)."""
    out: list[str] = []
    for run in _RUNS.findall(text):
        if not _HAN.match(run):
            out.append(run.lower())
        elif len(run) == 1:
            if run not in STOPWORDS:
                out.append(run)
        else:
            pairs = (run[i : i + 2] for i in range(len(run) - 1))
            # A pair of two function characters (的了, 了吗) says nothing of the topic.
            out.extend(p for p in pairs if not (p[0] in STOPWORDS and p[1] in STOPWORDS))
    return out


def sentences(text: str) -> list[str]:
    """Sentences at 。！？； and line breaks, punctuation kept."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk_text(
    text: str, size: int = 300, overlap: int = 60, title: bool = False
) -> list[tuple[str, str]]:
    """(heading, passage) pairs: passages of about `size` characters cut at sentence ends,
    each starting with up to `overlap` characters of the previous one's last sentences.
    Markdown headings (`# ...`) and short title lines become the heading of what follows;
    with `title`, so does a document's first line when it names the document."""
    out: list[tuple[str, str]] = []
    heading = ""
    current: list[str] = []
    length = 0

    def flush() -> None:
        nonlocal current, length
        if current:
            out.append((heading, "".join(current)))
            tail: list[str] = []
            for sentence in reversed(current):
                if sum(map(len, tail)) + len(sentence) > overlap:
                    break
                tail.insert(0, sentence)
            current, length = tail, sum(map(len, tail))

    first = title
    for line in text.replace("\r\n", "\n").split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        title, first = first and is_title(stripped), False
        if title or _is_heading(stripped):
            flush()
            current, length = [], 0
            heading = stripped.lstrip("#").strip()
            continue
        for sentence in sentences(stripped):
            if length + len(sentence) > size and length > overlap:
                flush()
            current.append(sentence)
            length += len(sentence)
    if current and (not out or "".join(current) not in out[-1][1]):
        out.append((heading, "".join(current)))
    if not out and heading:  # a text that is only a title keeps it
        out.append(("", heading))
    return out


def is_title(line: str) -> bool:
    """A document's first line that names it (短, no sentence punctuation): 案件办理流程规定."""
    line = line.strip()
    return 0 < len(line) <= 40 and not re.search(r"[。！？；，,.!?;:：、]", line)


def _is_heading(line: str) -> bool:
    if line.startswith("#"):
        return True
    return (
        len(line) <= 30
        and not re.search(r"[。！？；，,.!?;:：]$", line)
        and bool(
            re.match(
                r"^(第[一二三四五六七八九十百零\d]+[章节编部分]|[一二三四五六七八九十]+、|\d+(\.\d+)*\s)",
                line,
            )
        )
    )
