"""Pick an expert for a query from the expert cards (`expert=auto`).

Each expert is described by its card: description, system prompt and the prompts of its
before/after samples. The query and those texts are compared by their content words:
Chinese character bigrams inside runs of content (the text is first cut at punctuation
and at function, question and greeting words, so 怎么办 or 你好 match nothing) and English
words, weighted by IDF over the cards (the description, which states the domain, counts
three times), as cosine similarity. The best expert wins if it clears a minimum
similarity, else the base answers.

Single characters are not features: the common ones (你, 是, 的, 好) occur in every card's
system prompt, which is how 你好 once reached the law expert. And a question's words that
no card has count in its length, so one card word among many others is a weak match.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from domainlm.engine.adapters import BASE
from domainlm.expert import ExpertCard

#: Below this cosine similarity no expert is confident enough and the base answers.
#: Calibrated on questions written for tests/test_router.py against a law and a finance
#: card: greetings and unrelated questions score 0 unless they share a card word by
#: chance (公司年会…: 0.034 at most), domain questions that share one score 0.059 or more.
MIN_SIMILARITY = 0.045

#: Words that say nothing about a domain: greetings, pronouns, particles, question
#: phrasing and the boilerplate of system prompts ("你是一名专业的…助手"). They cut the
#: text into content runs. Single characters are listed only where they are seldom part
#: of a content word (的, 吗, 你), not 为 or 不, so 行为 and 不动产 stay whole.
STOPWORDS = (  # noqa: SIM905 (a word list reads better as one string)
    "你好 您好 大家好 早上好 上午好 中午好 下午好 晚上好 谢谢 感谢 多谢 再见 拜拜 哈哈 好的 "
    "在吗 你是谁 我们 你们 他们 她们 它们 咱们 大家 自己 什么 怎么办 怎么样 怎么 怎样 如何 "
    "为什么 为何 多少 哪些 哪个 哪里 是否 是不是 能不能 可不可以 可以 能否 应该 需要 请问 "
    "问题 问一下 一下 告诉 帮我 帮忙 知道 一个 一些 一点 这个 那个 这些 那些 这样 那样 "
    "如果 因为 所以 但是 然后 还是 或者 已经 没有 专业 助手 一名 一位 回答 用户 严谨 "
    "的 了 吗 呢 吧 啊 呀 嘛 么 我 你 您 他 她 它 咱"
).split()
ENGLISH_STOPWORDS = frozenset(
    (  # noqa: SIM905
        "hello hi hey thanks thank please what how why who whom which when where is are was "
        "were be been the an of to in on at for by with about and or but not no can could "
        "would should will do does did have has had me my mine we our us you your it its "
        "this that these those there here as if so any some more most very just also than then"
    ).split()
)
_STOP = re.compile("|".join(sorted(map(re.escape, STOPWORDS), key=len, reverse=True)))
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[a-z][a-z']+")


@dataclass
class Route:
    expert: str
    similarity: float
    reason: str


def features(text: str) -> Counter[str]:
    """Content bigrams of the Chinese in `text` and its English words (lower case)."""
    text = text.lower()
    grams: Counter[str] = Counter(w for w in _WORD.findall(text) if w not in ENGLISH_STOPWORDS)
    for run in _CJK_RUN.findall(_STOP.sub(" ", text)):
        grams.update(run[i : i + 2] for i in range(len(run) - 1))
    return grams


class Router:
    """TF-IDF over the cards' content features; cosine similarity to the query."""

    def __init__(self, cards: dict[str, ExpertCard]):
        self.profiles: dict[str, Counter[str]] = {}
        for name, card in cards.items():
            # The description states the domain; the system prompt and the sample
            # prompts say it less directly and bring incidental words (公司, 员工).
            others = [card.system_prompt or "", *[s.get("prompt", "") for s in card.samples]]
            profile = Counter({g: 3 * c for g, c in features(card.description).items()})
            self.profiles[name] = profile + features("\n".join(others))
        documents = len(self.profiles) or 1
        frequency = Counter(g for profile in self.profiles.values() for g in profile)
        self.idf = {g: math.log(1 + documents / n) for g, n in frequency.items()}
        self.unseen = math.log(1 + documents)
        self.vectors = {name: self._vector(p) for name, p in self.profiles.items()}

    def _vector(self, grams: Counter[str]) -> dict[str, float]:
        # A feature no card has weighs as much as the rarest card feature: a question
        # with one card word among many others is mostly about something else.
        return {g: c * self.idf.get(g, self.unseen) for g, c in grams.items()}

    def scores(self, query: str) -> dict[str, float]:
        """Each expert's cosine similarity to `query`."""
        query_vector = self._vector(features(query))
        norm_q = _norm(query_vector)
        return {
            name: sum(w * vector.get(g, 0.0) for g, w in query_vector.items())
            / (norm_q * _norm(vector))
            for name, vector in self.vectors.items()
        }

    def route(self, query: str) -> Route:
        scores = self.scores(query)
        best = max(scores, key=lambda name: scores[name], default=BASE)
        best_score = scores.get(best, 0.0)
        if best_score < MIN_SIMILARITY:
            return Route(BASE, best_score, "no expert's card matches the question")
        return Route(best, best_score, f"closest expert card (similarity {best_score:.2f})")


def _norm(vector: dict[str, float]) -> float:
    return math.sqrt(sum(v * v for v in vector.values())) or 1.0
