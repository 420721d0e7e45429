"""Law names: full names, short forms and abbreviations resolved to one name per law.

Short forms are derived from the names themselves (中华人民共和国劳动合同法 -> 劳动合同法;
全国人民代表大会常务委员会关于禁毒的决定 -> 关于禁毒的决定, 全国人大常委会关于禁毒的决定);
only abbreviations no rule can derive (民诉法, 消保法) come from `data/law_aliases.txt`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources

PREFIX = "中华人民共和国"
_ISSUERS = ("全国人民代表大会常务委员会", "全国人民代表大会", "全国人大常委会")
#: Version notes written after a name: 《民事诉讼法（2021修正）》, 《公司法》(2018年修订).
_VERSION_NOTE = re.compile(r"[（(]\s*\d{4}\s*年?\s*(?:修正|修订|修改)?\s*[)）]\s*$")
_PART_NOTE = re.compile(r"[·•・].*$")
_HAS_ARTICLE = re.compile(r"第[^《》〈〉]{1,12}条")


def curated_aliases() -> dict[str, str]:
    text = resources.files("domainlm.kb").joinpath("data").joinpath("law_aliases.txt")
    pairs = {}
    for line in text.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            alias, full = line.split()
            pairs[alias] = full
    return pairs


def short_forms(name: str) -> list[str]:
    """The ways a text may write `name`, the name itself first."""
    forms = [name]
    if name.startswith(PREFIX) and len(name) > len(PREFIX) + 1:
        forms.append(name[len(PREFIX) :])
    for issuer in _ISSUERS:
        if name.startswith(issuer) and name[len(issuer) :].startswith("关于"):
            rest = name[len(issuer) :]
            forms += [rest, *(other + rest for other in _ISSUERS if other != issuer)]
    if name.startswith("关于") and name.endswith("的决定"):
        forms += [issuer + name for issuer in _ISSUERS]
    # A name quoted inside a name is written 〈〉 inside 《》 too.
    forms += [f.replace("《", "〈").replace("》", "〉") for f in forms if "《" in f]
    return forms


class LawNames:
    """Resolves 民法典 / 《中华人民共和国民法典》 / 民诉法 / 合同法 to one name per law.

    `names` are the laws the KB holds; `repealed` are laws its statutes say were repealed
    (they resolve to the name the repealing clause uses). A form that could mean two laws
    goes to a law the KB holds, then to the first name given.
    """

    def __init__(self, names: Iterable[str], repealed: Iterable[str] = ()):
        self.names = set(names)
        self.repealed = set(repealed) - self.names
        aliases: dict[str, str] = {}
        for name in sorted(self.names):
            aliases.setdefault(name, name)
        for alias, full in curated_aliases().items():
            if full in self.names:
                aliases.setdefault(alias, full)
        for name in sorted(self.names):
            for form in short_forms(name)[1:]:
                aliases.setdefault(form, name)
        for name in sorted(self.repealed):
            for form in short_forms(name):
                aliases.setdefault(form, name)
        self.aliases = aliases
        self.longest = max((len(a) for a in aliases), default=0)
        self._longest_first = sorted((a for a in aliases if len(a) >= 3), key=len, reverse=True)
        #: Names that hold an article reference themselves (关于《刑事诉讼法》第七十九条…的解释).
        self.citing_names = [a for a in self._longest_first if _HAS_ARTICLE.search(a)]

    def resolve(self, raw: str) -> str | None:
        name = raw.strip().strip("《》〈〉<> ")
        for candidate in (name, _VERSION_NOTE.sub("", name).strip(), _PART_NOTE.sub("", name)):
            if candidate in self.aliases:
                return self.aliases[candidate]
            if not candidate.startswith(PREFIX) and PREFIX + candidate in self.aliases:
                return self.aliases[PREFIX + candidate]
        return None

    def ending_at(self, text: str, end: int) -> tuple[str, int] | None:
        """The longest known name (or alias) that ends at `end` in `text`: (law, start)."""
        for length in range(min(self.longest, end), 1, -1):
            candidate = text[end - length : end]
            if candidate in self.aliases:
                return self.aliases[candidate], end - length
        return None

    def spans_of_citing_names(self, text: str) -> list[tuple[int, int]]:
        """Where names that hold an article reference stand in `text` (to skip them)."""
        spans = []
        for alias in self.citing_names:
            start = text.find(alias)
            while start != -1:
                spans.append((start, start + len(alias)))
                start = text.find(alias, start + 1)
        return spans

    def mentioned(self, text: str) -> list[str]:
        """Laws named anywhere in `text` (longest aliases first, no overlaps)."""
        found, taken = [], [False] * len(text)
        for alias in self._longest_first:
            start = text.find(alias)
            while start != -1:
                if not any(taken[start : start + len(alias)]):
                    found.append(self.aliases[alias])
                    for i in range(start, start + len(alias)):
                        taken[i] = True
                start = text.find(alias, start + 1)
        return list(dict.fromkeys(found))
