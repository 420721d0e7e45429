"""Law names: full names, short names and abbreviations resolved to the name in the KB."""

from __future__ import annotations

from importlib import resources

PREFIX = "中华人民共和国"


def curated_aliases() -> dict[str, str]:
    text = resources.files("domainlm.kb").joinpath("data").joinpath("law_aliases.txt")
    pairs = {}
    for line in text.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            alias, full = line.split()
            pairs[alias] = full
    return pairs


class LawNames:
    """Resolves 民法典 / 《中华人民共和国民法典》 / 民诉法 to the KB's law name."""

    def __init__(self, names: list[str]):
        self.names = set(names)
        aliases: dict[str, str] = {name: name for name in names}
        for name in names:
            if name.startswith(PREFIX) and len(name) > len(PREFIX) + 1:
                aliases.setdefault(name[len(PREFIX) :], name)
        for alias, full in curated_aliases().items():
            if full in self.names:
                aliases.setdefault(alias, full)
        self.aliases = aliases
        self.longest = max((len(a) for a in aliases), default=0)

    def resolve(self, raw: str) -> str | None:
        name = raw.strip().strip("《》〈〉<> ")
        if name in self.aliases:
            return self.aliases[name]
        if not name.startswith(PREFIX) and PREFIX + name in self.aliases:
            return self.aliases[PREFIX + name]
        return None

    def ending_at(self, text: str, end: int) -> tuple[str, int] | None:
        """The longest known name (or alias) that ends at `end` in `text`: (law, start)."""
        for length in range(min(self.longest, end), 1, -1):
            candidate = text[end - length : end]
            if candidate in self.aliases:
                return self.aliases[candidate], end - length
        return None

    def mentioned(self, text: str) -> list[str]:
        """Laws named anywhere in `text` (longest aliases first, no overlaps)."""
        found, taken = [], [False] * len(text)
        for alias in sorted(self.aliases, key=len, reverse=True):
            if len(alias) < 3:
                continue
            start = text.find(alias)
            while start != -1:
                if not any(taken[start : start + len(alias)]):
                    found.append(self.aliases[alias])
                    for i in range(start, start + len(alias)):
                        taken[i] = True
                start = text.find(alias, start + 1)
        return list(dict.fromkeys(found))
