"""KnowledgeBase: build, open, search, get and verify against a KB folder.

```
KB_DIR/
  kb.json        manifest: format version, sources, counts, tokenizer words
  store.sqlite   documents, chunks (with statute metadata and cached tokens), laws
  bm25/ rows.npy current.npy laws.npy   the BM25 index and per-row filters
```
A KB is always built (or changed) in a temporary folder next to KB_DIR and swapped in, so
an existing KB is never left half-written.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domainlm.errors import DomainLMError
from domainlm.io import atomic_write
from domainlm.kb import citations as cite
from domainlm.kb import history, verdicts
from domainlm.kb.dense import DENSE_FILE, RERANK_DEPTH, Encoder, Reranker, embed_all, fuse
from domainlm.kb.index import CHARS_DIR, Bm25Index
from domainlm.kb.laws import PREFIX, LawNames
from domainlm.kb.numerals import NUMERAL, article_label
from domainlm.kb.ranking import Ranking
from domainlm.kb.sources import (
    CHINA_LAW,
    Document,
    Unreadable,
    china_law_db,
    read_china_law,
    read_files,
    source_name,
)
from domainlm.kb.store import STORE_FILE, Chunk, Store
from domainlm.kb.text import Tokenizer, char_bigrams, synonyms

MANIFEST = "kb.json"
FORMAT = 3  # 2: articles 之N have their own identity; repeal and amendment tables; 3: chars
MAX_QUERY_CHARS = 2000
#: Agreement votes (`Ranking.law_votes`/`chapter_votes`): the first-stage candidates that
#: are re-scored, and the top ones whose laws and chapters vote.
VOTE_DEPTH, VOTERS = 100, 20
_REFERENCE = re.compile(rf"第{NUMERAL}[条款项编章节]")

Progress = Callable[[str, int, int], None]


def _quiet(stage: str, done: int, total: int) -> None:
    pass


class KnowledgeBase:
    """An opened KB folder."""

    def __init__(
        self,
        folder: Path,
        store: Store,
        index: Bm25Index,
        chars: Bm25Index,
        manifest: dict[str, Any],
    ):
        self.folder = folder
        self.store = store
        self.index = index  # words
        self.chars = chars  # character pairs, same rows
        self.manifest = manifest
        self.laws = LawNames(manifest.get("laws", []), manifest.get("repealed", []))
        self.law_of_row = np.load(folder / "laws.npy")
        self._tokenizer: Tokenizer | None = None
        self.dense: np.ndarray | None = None
        self._encoder: Any = None
        if manifest.get("dense"):
            # fp16 on disk, fp32 in memory: numpy has no fast fp16 matrix product.
            self.dense = np.load(folder / DENSE_FILE).astype(np.float32)

    @classmethod
    def open(cls, folder: str | Path) -> KnowledgeBase:
        """Open a built KB.

        Raises:
            DomainLMError: if `folder` is not a knowledge base.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        store = Store(folder / STORE_FILE)
        return cls(
            folder, store, Bm25Index.load(folder), Bm25Index.load(folder, CHARS_DIR), manifest
        )

    @property
    def ranking(self) -> Ranking:
        """The KB's ranking: fitted with `kb tune`, else the defaults."""
        return Ranking(**self.manifest.get("ranking", {}))

    def save_ranking(self, ranking: Ranking) -> None:
        """Keep `ranking` in the manifest (written whole, atomically)."""
        self.manifest["ranking"] = ranking.model_dump()
        with atomic_write(self.folder / MANIFEST) as handle:
            handle.write(json.dumps(self.manifest, ensure_ascii=False, indent=1))

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:  # jieba's dictionary takes ~0.5 s: load on first query
            self._tokenizer = Tokenizer(self.manifest.get("user_words", []))
        return self._tokenizer

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = Encoder(self.manifest["dense"])
        return self._encoder

    def close(self) -> None:
        self.store.close()

    def search(
        self,
        query: str,
        k: int = 5,
        current_only: bool = True,
        law: str | None = None,
        reranker: Reranker | Any = None,
        ranking: Ranking | None = None,
        rewriter: Any = None,
    ) -> list[Chunk]:
        """The `k` chunks that best answer `query`: articles the query cites first, then BM25
        (fused with the dense ranking in a dense KB) as `ranking` (the KB's own) weighs it.
        A `rewriter` (`kb.assisted.ModelRewriter`) adds the scores of the statute words a
        model writes for the query; a `reranker` (a cross-encoder or `ModelReranker`)
        re-scores the top `RERANK_DEPTH`.

        Raises:
            DomainLMError: for an empty or over-long query, or an unknown `law`.
        """
        query = query.strip()
        if not query:
            raise DomainLMError("empty query")
        if len(query) > MAX_QUERY_CHARS:
            raise DomainLMError(f"query of {len(query)} characters (at most {MAX_QUERY_CHARS})")
        # Traditional characters, full-width digits and letters read as the statutes write.
        query = cite.normalise(query)
        wanted_law = None
        if law is not None:
            wanted_law = self.laws.resolve(law)
            if wanted_law is None:
                raise DomainLMError(f"no law named {law!r} in this knowledge base")
        direct = self._direct(query, wanted_law)
        ranking = ranking or self.ranking
        scores = self._scores(query, wanted_law, current_only, ranking)
        if rewriter is not None:
            rewritten = cite.normalise(rewriter.rewrite([query])[0])
            if rewritten:
                scores = scores + self._scores(rewritten, wanted_law, current_only, ranking)
        if ranking.law_votes or ranking.chapter_votes:
            scores = self._votes(scores, ranking)
        exclude = {c.id for c in direct}
        depth = max(k, RERANK_DEPTH) if reranker is not None else k
        top = np.argsort(-scores)[: depth + len(exclude)]
        ids = [int(self.index.rows[i]) for i in top if scores[i] > 0]
        found = self.store.chunks(ids)
        ranked = list(direct)
        for row in top:
            chunk = found.get(int(self.index.rows[row]))
            if chunk is not None and chunk.id not in exclude and scores[row] > 0:
                chunk.score = float(scores[row])
                chunk.via = "hybrid" if self.dense is not None else "bm25"
                ranked.append(chunk)
        if reranker is not None:
            rest = ranked[len(direct) :]
            for chunk, score in zip(
                rest, reranker.scores(query, [c.text for c in rest]), strict=True
            ):
                chunk.score, chunk.via = score, "rerank"
            ranked = list(direct) + sorted(rest, key=lambda c: -c.score)
        return ranked[:k]

    def _votes(self, scores: np.ndarray, ranking: Ranking) -> np.ndarray:
        """The first-stage candidates re-scored by agreement: an article gains in proportion
        to the share of the top `VOTERS` from its law and from its chapter (a question
        about 保险 whose top 20 are mostly 保险法 articles makes the 保险法 articles among the
        candidates likelier than a lone article of another law that shares a rare word)."""
        candidates = np.argpartition(-scores, min(VOTE_DEPTH, len(scores) - 1))[:VOTE_DEPTH]
        candidates = candidates[np.argsort(-scores[candidates])]
        candidates = candidates[scores[candidates] > 0]
        if len(candidates) < 2:
            return scores
        voters = candidates[:VOTERS]
        boost = np.ones(len(candidates), dtype=np.float32)
        for weight, groups in ((ranking.law_votes, self.law_of_row),
                               (ranking.chapter_votes, self.chapter_of_row)):  # fmt: skip
            if weight:
                values, counts = np.unique(groups[voters], return_counts=True)
                share = dict(zip(values.tolist(), (counts / len(voters)).tolist(), strict=True))
                boost += weight * np.array([share.get(g, 0.0) for g in groups[candidates].tolist()])
        scores = scores.copy()
        scores[candidates] *= boost
        return scores

    @functools.cached_property
    def chapter_of_row(self) -> np.ndarray:
        """(rows,) a number per chapter (a statute's law and chapter; a document and its
        heading) for the index rows."""
        group: dict[tuple[Any, ...], int] = {}
        of_chunk = {
            cid: group.setdefault((law or doc, chapter or heading or ""), len(group))
            for cid, doc, law, chapter, heading in self.store.conn.execute(
                "SELECT id, doc_id, law, chapter, heading FROM chunks"
            )
        }
        return np.asarray([of_chunk[int(c)] for c in self.index.rows], dtype=np.int64)

    def _direct(self, query: str, wanted_law: str | None) -> list[Chunk]:
        hits = []
        for citation in cite.extract(query, self):
            if citation.law is None or (wanted_law and citation.law != wanted_law):
                continue
            versions = self.store.articles(citation.law, citation.article, citation.sub)
            if versions:
                versions[0].score, versions[0].via = float("inf"), "cited"
                hits.append(versions[0])
        return hits

    def _scores(
        self, query: str, wanted_law: str | None, current_only: bool, ranking: Ranking
    ) -> np.ndarray:
        text = _REFERENCE.sub(" ", query)
        terms = self._terms(query, ranking)
        scores = _share(self.index.scores(terms), self.index.ceiling(terms))
        if ranking.chars:
            pairs: dict[str, float] = {}
            for pair in char_bigrams(text):
                pairs[pair] = pairs.get(pair, 0.0) + 1.0
            pairs = self.chars.specific(pairs, ranking.specific, self.tokenizer.general_share)
            scores = scores + ranking.chars * _share(
                self.chars.scores(pairs), self.chars.ceiling(pairs)
            )
        mask = self.index.current if current_only else np.ones_like(scores)
        if self.dense is not None:
            query_vector = self.encoder.encode([query])[0]
            scores = fuse(scores, self.dense @ query_vector, mask, ranking.dense)
        scores = scores * mask
        held = self.manifest["laws"]
        named = [wanted_law] if wanted_law else [n for n in self.laws.mentioned(query) if n in held]
        if named:
            law_ids = [held.index(n) for n in named]
            in_named = np.isin(self.law_of_row, law_ids)
            scores = scores * np.where(in_named, 1.0, 0.0 if wanted_law else ranking.mention)
        return scores

    def _terms(self, query: str, ranking: Ranking) -> dict[str, float]:
        """The weighted word terms of `query`.

        Each word counts 1. The shorter words jieba's search mode finds inside it count
        `ranking.parts` when the statutes use the word itself (个人独资企业 is in the index, so
        个人, 独资 and 企业 would only count it again, and 承担责任's 承担, 责任 and 担责任
        would make one phrase outweigh the rest of the question) and 1 when they do not
        (借钱 is not a statute word: 借 and 钱 are what there is to match). The question's
        own terms are scaled by their specificity to the corpus (`Bm25Index.specific`);
        terms of the synonym file, statute terms by design, come in at `ranking.expansion`.
        """
        weighted: dict[str, float] = {}
        for word, parts in self.tokenizer.words(_REFERENCE.sub(" ", query)):
            weighted[word] = weighted.get(word, 0.0) + 1.0
            share = ranking.parts if word in self.index.vocab else 1.0
            for part in parts:
                weighted[part] = weighted.get(part, 0.0) + share
        weighted = self.index.specific(weighted, ranking.specific, self.tokenizer.general_share)
        for word, expansions in synonyms().items():
            if all(part in query for part in word.split("+")):
                for term in expansions:
                    weighted.setdefault(term, ranking.expansion)
        return {term: weight for term, weight in weighted.items() if weight > 0}

    def get(self, law: str, number: int, sub: int = 0) -> list[Chunk]:
        """Every version of article `number` (之`sub`) of `law` (current first).

        Raises:
            DomainLMError: for an unknown law or article.
        """
        name = self.laws.resolve(law)
        if name in self.laws.repealed:  # known from a repeal clause, text not held
            raise DomainLMError(self.judge_article(law, number, sub).detail)
        if name is None or name not in self.laws.names:
            raise DomainLMError(f"no law named {law!r} in this knowledge base")
        versions = self.store.articles(name, number, sub)
        if not versions:
            written = f"{number}之{sub}" if sub else str(number)
            last = self.store.max_article(name)
            subs = self.store.subs(name, number)
            also = f"; it has {', '.join(f'{number}之{s}' for s in subs)}" if subs and sub else ""
            raise DomainLMError(
                f"{name} has no article {written} ({article_label(number, sub)}; "
                f"articles 1-{last}{also})"
            )
        return versions

    def judge_article(
        self, law: str, number: int, sub: int = 0, on: str | None = None
    ) -> cite.Citation:
        """The verdict on one article of a law the KB holds (as `verify` gives it)."""
        name = self.laws.resolve(law)
        citation = cite.Citation(
            text=law, start=0, end=0, law_written=law, law=name, article=number, sub=sub
        )
        verdicts.Judge(self, on, suggest=False).judge(citation)
        return citation

    def verify(self, text: str, on: str | None = None, suggest: bool = True) -> list[cite.Citation]:
        """Every statute citation in `text`, judged as of `on` (ISO date, default today):
        see `kb.verdicts` for what each verdict means."""
        return verdicts.verify(text, self, on, suggest)

    def stats(self) -> dict[str, Any]:
        stats = self.store.stats()
        stats["built"] = self.manifest.get("built")
        stats["index_rows"] = len(self.index.rows)
        stats["skipped"] = self.manifest.get("skipped", [])
        return stats


def _share(scores: np.ndarray, ceiling: float) -> np.ndarray:
    """`scores` as shares of the query's `ceiling` (`Bm25Index.ceiling`)."""
    return scores / ceiling if ceiling > 0 else scores


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise DomainLMError(
            f"{folder}: not a knowledge base (no {MANIFEST}; build one with kb build)"
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DomainLMError(f"{path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DomainLMError(
            f"{folder}: knowledge base format {manifest.get('format')} (expected {FORMAT}): "
            "rebuild it with `domainlm kb build`"
        )
    return manifest


@dataclass
class IngestReport:
    """What `build`/`add` did with each source file."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # same path, new content
    unchanged: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, same content as)
    skipped: list[Unreadable] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added",
            f"{len(self.replaced)} replaced (changed since added)",
            f"{len(self.unchanged)} unchanged",
        ]
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicate(s) of documents already there")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable file(s) skipped")
        return ", ".join(parts)


def build(
    folder: str | Path,
    sources: list[str],
    progress: Progress = _quiet,
    workers: int | None = None,
    dense: str | None = None,
    strict: bool = False,
) -> KnowledgeBase:
    """Build a KB at `folder` from `sources` (`china-law`, a laws.db, files or folders),
    replacing any KB already there. `dense` adds sentence embeddings (`use` or a local
    sentence-transformers folder) fused with BM25 at query time. Unreadable files are
    skipped and listed in the manifest (`skipped`); with `strict` they stop the build."""
    folder = Path(folder)
    if not sources:
        raise DomainLMError("give at least one --source (china-law, a file or a folder)")
    _check_replaceable(folder)
    with _staging(folder, copy=False) as staging:
        store = Store(staging / STORE_FILE)
        encoder = Encoder(dense) if dense else None  # fail early on a missing encoder
        report = _ingest(store, sources, progress, strict)
        _finish(staging, store, progress, workers, encoder, report)
    return KnowledgeBase.open(folder)


def from_document(path: str | Path) -> KnowledgeBase:
    """A throwaway KB over one PDF/text/docx file (the "chat with this document" pattern).

    The KB lives in a temporary folder removed when the process exits.
    """
    import atexit

    folder = Path(tempfile.mkdtemp(prefix="domainlm-doc-kb-"))
    atexit.register(shutil.rmtree, folder, True)
    return build(folder / "kb", [str(path)], workers=1, strict=True)


def add(
    folder: str | Path, sources: list[str], progress: Progress = _quiet, strict: bool = False
) -> IngestReport:
    """Add `sources` to the KB at `folder`. A file already there (same path) is skipped when
    its content is unchanged and replaced when it changed; unreadable files are skipped
    (with `strict`, they stop the change and the KB stays as it was)."""
    folder = Path(folder)
    encoder = _encoder_of(read_manifest(folder))
    with _staging(folder, copy=True) as staging:
        store = Store(staging / STORE_FILE)
        report = _ingest(store, sources, progress, strict)
        _finish(staging, store, progress, None, encoder, report)
    return report


def _encoder_of(manifest: dict[str, Any]) -> Encoder | None:
    # Vectors are not kept per chunk, so a dense KB re-embeds everything when it changes.
    return Encoder(manifest["dense"]) if manifest.get("dense") else None


def remove(folder: str | Path, sources: list[str], progress: Progress = _quiet) -> int:
    """Remove the documents read from `sources` (files as `kb stats` lists them, or a
    folder: every document under it); how many."""
    folder = Path(folder)
    encoder = _encoder_of(read_manifest(folder))
    with _staging(folder, copy=True) as staging:
        store = Store(staging / STORE_FILE)
        removed = sum(store.remove_source(_source_name(s)) for s in sources)
        left = store.conn.execute("SELECT count(*) FROM docs").fetchone()[0]
        if not removed or not left:
            store.close()
        if not removed:
            raise DomainLMError(f"no documents from {', '.join(sources)} in {folder}")
        if not left:
            raise DomainLMError(
                f"removing {', '.join(sources)} would leave {folder} empty (delete the folder)"
            )
        _finish(staging, store, progress, None, encoder)
    return removed


def _source_name(source: str) -> str:
    if source == CHINA_LAW:
        return source_name(china_law_db())
    return source_name(Path(source))


def _documents(source: str) -> Iterable[Document | Unreadable]:
    if source == CHINA_LAW:
        yield read_china_law(china_law_db())
    elif source.endswith(".db"):
        yield read_china_law(Path(source))
    else:
        yield from read_files(Path(source))


def _ingest(store: Store, sources: list[str], progress: Progress, strict: bool) -> IngestReport:
    report = IngestReport()
    for source in sources:
        for document in _documents(source):
            if isinstance(document, Unreadable):
                report.skipped.append(document)
                continue
            known = store.doc_hash(document.source)
            if known == document.content_hash:
                report.unchanged.append(document.source)
                continue
            same = store.source_of(document.content_hash)
            if same is not None and same != document.source:
                report.duplicates.append((document.source, same))
                continue
            if known is not None:
                store.remove_source(document.source)
                report.replaced.append(document.source)
            else:
                report.added.append(document.source)
            store.add_doc(
                document.source,
                document.title,
                document.kind,
                document.content_hash,
                document.chunks,
            )
            store.add_laws(document.laws)
            progress("read", len(report.added) + len(report.replaced), 0)
    if strict and report.skipped:
        raise DomainLMError(
            "unreadable: " + "; ".join(f"{u.path}: {u.reason}" for u in report.skipped)
        )
    store.commit()
    return report


def _user_words(law_names: list[str]) -> list[str]:
    words = set()
    for name in law_names:
        words.add(name)
        if name.startswith(PREFIX):
            words.add(name[len(PREFIX) :])
    return sorted(words)


def _tokenize_batch(args: tuple[list[str], list[str]]) -> list[str]:
    words, texts = args
    tokenizer = _worker_tokenizer(words)
    return [" ".join(tokenizer.tokens(_REFERENCE.sub(" ", t))) for t in texts]


_WORKER: dict[tuple[str, ...], Tokenizer] = {}


def _worker_tokenizer(words: list[str]) -> Tokenizer:
    key = tuple(words)
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = Tokenizer(words)
    return _WORKER[key]


def _finish(
    staging: Path,
    store: Store,
    progress: Progress,
    workers: int | None,
    encoder: Any = None,
    report: IngestReport | None = None,
) -> None:
    """Tokenize new chunks (in parallel), rebuild the index, write the manifest."""
    started = time.perf_counter()
    law_names = sorted(store.law_names())
    words = _user_words(law_names)
    pending = store.untokenized()
    batches = [pending[i : i + 1000] for i in range(0, len(pending), 1000)]
    workers = workers or max(1, min(len(batches), os.cpu_count() or 1))
    done = 0
    if batches:
        jobs = [(words, [text for _, text in batch]) for batch in batches]
        if workers == 1:
            results: Iterable[list[str]] = map(_tokenize_batch, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_tokenize_batch, jobs)
        for batch, tokens in zip(batches, results, strict=True):
            store.set_tokens(
                (joined, chunk_id) for (chunk_id, _), joined in zip(batch, tokens, strict=True)
            )
            done += len(batch)
            progress("tokenize", done, len(pending))
        if pool is not None:
            pool.shutdown()
    history.mine(store)
    store.commit()
    rows = list(store.all_tokens())
    if not rows:
        why = "; ".join(f"{u.path}: {u.reason}" for u in report.skipped) if report else ""
        raise DomainLMError("the sources hold no text" + (f" ({why})" if why else ""))
    law_index = {name: i for i, name in enumerate(law_names)}
    law_of = {
        cid: law_index.get(law, -1) for cid, law in store.conn.execute("SELECT id, law FROM chunks")
    }
    general = _worker_tokenizer(words).general_share
    index = Bm25Index.build(
        [r[0] for r in rows], [r[1].split() for r in rows], [r[2] for r in rows], general
    )
    index.save(staging)
    texts = dict(store.indexed_texts())
    chars = Bm25Index.build(
        [r[0] for r in rows],
        [char_bigrams(_REFERENCE.sub(" ", texts[r[0]])) for r in rows],
        [r[2] for r in rows],
        general,
    )
    chars.save(staging, CHARS_DIR)
    np.save(staging / "laws.npy", np.asarray([law_of[r[0]] for r in rows], dtype=np.int32))
    if encoder is not None:
        texts = dict(store.conn.execute("SELECT id, coalesce(heading, '') || text FROM chunks"))
        vectors = embed_all(encoder, [texts[r[0]] for r in rows], progress)
        np.save(staging / DENSE_FILE, vectors)
    # A ranking fitted with `kb tune` stays through `kb add` and `kb remove` (`kb build`
    # starts afresh: new content, new fit).
    kept = read_manifest(staging).get("ranking") if (staging / MANIFEST).is_file() else None
    manifest = {
        "format": FORMAT,
        "dense": encoder.spec if encoder is not None else None,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sources": [r[0] for r in store.conn.execute("SELECT DISTINCT source FROM docs")],
        "chunks": len(rows),
        "laws": law_names,
        "repealed": [r[0] for r in store.conn.execute("SELECT name FROM repeals ORDER BY 1")],
        "user_words": words,
        "build_seconds": round(time.perf_counter() - started, 2),
        # Files the last build/add could not read, with the reason.
        "skipped": [asdict(u) for u in report.skipped] if report else [],
    }
    if kept:
        manifest["ranking"] = kept
    store.close()
    (staging / MANIFEST).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    progress("index", len(rows), len(rows))


def _check_replaceable(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise DomainLMError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise DomainLMError(
            f"{folder}: a non-empty folder that is not a knowledge base (not replacing it)"
        )


class _staging:
    """A temp folder next to `folder`, swapped in on success and removed on failure."""

    def __init__(self, folder: Path, copy: bool):
        self.folder, self.copy = folder, copy

    def __enter__(self) -> Path:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
        if self.copy:  # the store, and the manifest for what `_finish` keeps of it
            shutil.copy2(self.folder / STORE_FILE, self.path / STORE_FILE)
            shutil.copy2(self.folder / MANIFEST, self.path / MANIFEST)
        return self.path

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if error is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        old = None
        if self.folder.exists():
            old = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
            os.replace(self.folder, old)
        os.replace(self.path, self.folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
