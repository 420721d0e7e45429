"""Pick an expert for a query from the expert cards (`expert=auto`).

Each expert is described by its card: description, system prompt and the prompts of its
before/after samples. The query and those texts are compared as character bigrams with
IDF weights (robust for Chinese without a tokenizer, and for mixed Chinese/English); the
best expert wins if it clears a minimum similarity, else the base answers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from domainlm.engine.adapters import BASE
from domainlm.expert import ExpertCard

#: Below this cosine similarity no expert is confident enough and the base answers.
MIN_SIMILARITY = 0.05


@dataclass
class Route:
    expert: str
    similarity: float
    reason: str


def _grams(text: str) -> Counter[str]:
    text = "".join(ch.lower() for ch in text if ch.isalnum())
    return Counter(text[i : i + 2] for i in range(len(text) - 1)) + Counter(text)


class Router:
    """TF-IDF over character n-grams of the cards; cosine similarity to the query."""

    def __init__(self, cards: dict[str, ExpertCard]):
        self.profiles: dict[str, Counter[str]] = {}
        for name, card in cards.items():
            text = " ".join(
                [
                    card.description,
                    card.system_prompt or "",
                    *[s.get("prompt", "") for s in card.samples],
                ]
            )
            self.profiles[name] = _grams(text)
        documents = len(self.profiles) or 1
        frequency = Counter(g for profile in self.profiles.values() for g in profile)
        self.idf = {g: math.log(1 + documents / n) for g, n in frequency.items()}

    def _vector(self, grams: Counter[str]) -> dict[str, float]:
        return {g: c * self.idf.get(g, 0.0) for g, c in grams.items() if g in self.idf}

    def route(self, query: str) -> Route:
        query_vector = self._vector(_grams(query))
        norm_q = math.sqrt(sum(v * v for v in query_vector.values())) or 1.0
        best, best_score = BASE, 0.0
        for name, profile in self.profiles.items():
            vector = self._vector(profile)
            norm = math.sqrt(sum(v * v for v in vector.values())) or 1.0
            score = sum(w * vector.get(g, 0.0) for g, w in query_vector.items()) / (norm_q * norm)
            if score > best_score:
                best, best_score = name, score
        if best_score < MIN_SIMILARITY:
            return Route(BASE, best_score, "no expert's card matches the question")
        return Route(best, best_score, f"closest expert card (similarity {best_score:.2f})")
