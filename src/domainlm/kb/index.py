"""The BM25 index over chunk tokens (bm25s: sparse matrices, fast to build and query).

A KB has two over the same rows: its words (`bm25/`) and its character pairs
(`bm25_chars/`), each in bm25s' own files, plus `rows.npy` (chunk id of each row) and
`current.npy` (1 where the chunk is in force, for the current-only filter).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

INDEX_DIR = "bm25"
CHARS_DIR = "bm25_chars"
SPECIFICITY_FILE = "specificity.npy"
IDF_FILE = "idf.npy"
TOTAL_FILE = "tokens.txt"
#: BM25's parameters. b=1: statute articles range from one line to a page; full length
#: normalisation ranked best on the dev set (recall@5 0.687 vs 0.673 at b=0.9, 0.660 at 0.75).
K1, B = 1.2, 1.0


class Bm25Index:
    """BM25 scores of weighted query terms against every chunk."""

    def __init__(
        self,
        retriever: object,
        rows: np.ndarray,
        current: np.ndarray,
        specificity: np.ndarray,
        idf: np.ndarray,
        total: int,
    ):
        self.retriever = retriever
        self.rows = rows  # (chunks,) chunk ids
        self.current = current  # (chunks,) float32 0/1
        self.vocab: dict[str, int] = dict(retriever.vocab_dict)  # type: ignore[attr-defined]
        self.specificity = specificity  # (vocab,) float32 in (0, 1)
        self.idf = idf  # (vocab,) float32
        self.total = total  # tokens in the corpus
        # What a term in no chunk would get: its idf and its share of the corpus.
        self.unseen_idf = float(np.log(1 + (len(rows) + 0.5) / 0.5))
        self.unseen_share = 0.5 / max(1, total)

    @classmethod
    def build(
        cls,
        ids: Sequence[int],
        tokens: Sequence[list[str]],
        current: Sequence[bool],
        general_share: Callable[[str], float],
    ) -> Bm25Index:
        """`general_share(term)`: the term's share of general text, for its specificity."""
        import bm25s

        retriever = bm25s.BM25(k1=K1, b=B)
        retriever.index([t or [""] for t in tokens], show_progress=False)
        counts: Counter[str] = Counter()
        rows_with: Counter[str] = Counter()
        for row in tokens:
            counts.update(row)
            rows_with.update(set(row))
        vocab: dict[str, int] = dict(retriever.vocab_dict)
        specificity = np.ones(len(vocab), dtype=np.float32)
        idf = np.zeros(len(vocab), dtype=np.float32)
        total, n = max(1, sum(counts.values())), len(tokens)
        for term, index in vocab.items():
            here = (counts.get(term, 0) + 0.5) / total
            specificity[index] = here / (here + general_share(term))
            df = rows_with.get(term, 0)
            idf[index] = np.log(1 + (n - df + 0.5) / (df + 0.5))  # bm25s' (Lucene's) idf
        return cls(
            retriever,
            np.asarray(ids, dtype=np.int64),
            np.asarray(current, dtype=np.float32),
            specificity,
            idf,
            total,
        )

    def save(self, folder: Path, name: str = INDEX_DIR) -> None:
        self.retriever.save(str(folder / name))  # type: ignore[attr-defined]
        np.save(folder / name / SPECIFICITY_FILE, self.specificity)
        np.save(folder / name / IDF_FILE, self.idf)
        (folder / name / TOTAL_FILE).write_text(str(self.total))
        np.save(folder / "rows.npy", self.rows)
        np.save(folder / "current.npy", self.current)

    @classmethod
    def load(cls, folder: Path, name: str = INDEX_DIR) -> Bm25Index:
        import bm25s

        retriever = bm25s.BM25.load(str(folder / name), mmap=False)
        return cls(
            retriever,
            np.load(folder / "rows.npy"),
            np.load(folder / "current.npy"),
            np.load(folder / name / SPECIFICITY_FILE),
            np.load(folder / name / IDF_FILE),
            int((folder / name / TOTAL_FILE).read_text()),
        )

    def known(self, tokens: list[str]) -> list[str]:
        return [t for t in tokens if t in self.vocab]

    def specific(
        self, weighted: dict[str, float], power: float, general_share: Callable[[str], float]
    ) -> dict[str, float]:
        """`weighted` with each weight scaled by its term's specificity to the corpus raised
        to `power` (0: unchanged).

        Specificity is the term's share of this corpus against its share of general text
        (`general_share`), p / (p + p_general). BM25's idf favours whatever is rare in the
        corpus, which for a statute corpus includes everyday words: 朋友 is in four
        articles, so a question about a friend's unpaid loan ranks the adoption article
        that names 亲属、朋友 first. Terms of art, which the statutes use far more than
        everyday text does (借款, 建筑物, 罚款), keep their weight.
        """
        if not power:
            return weighted
        out = {}
        for term, weight in weighted.items():
            index = self.vocab.get(term)
            if index is None:
                here = self.unseen_share
                specificity = here / (here + general_share(term))
            else:
                specificity = float(self.specificity[index])
            out[term] = weight * specificity**power
        return out

    def ceiling(self, weighted: dict[str, float]) -> float:
        """What a chunk holding every query term, each as often as BM25 can count, would
        score. Scores over it are the share of the query a chunk matches, on one scale for
        both fields; terms no chunk holds count at the idf they would have, so a question
        of which little can be matched gives its best weak match a small share, not all."""
        total = 0.0
        for term, weight in weighted.items():
            index = self.vocab.get(term)
            idf = self.unseen_idf if index is None else float(self.idf[index])
            total += max(weight, 0.0) * idf * (K1 + 1)
        return total

    def scores(self, weighted: dict[str, float]) -> np.ndarray:
        """(chunks,) BM25 score of the query terms, each scaled by its weight."""
        total = np.zeros(len(self.rows), dtype=np.float32)
        by_weight: dict[float, list[int]] = {}
        for term, weight in weighted.items():
            if term in self.vocab and weight > 0:
                by_weight.setdefault(weight, []).append(self.vocab[term])
        for weight, ids in by_weight.items():
            total += weight * self.retriever.get_scores_from_ids(ids)  # type: ignore[attr-defined]
        return total
