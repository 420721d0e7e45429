"""The knowledge base's SQLite store: documents, chunks (with statute metadata) and laws.

One file, `store.sqlite`, in the KB folder. Chunks keep their search tokens so an index can
be rebuilt after `kb add` / `kb remove` without tokenizing the whole corpus again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STORE_FILE = "store.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, title TEXT, kind TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE, added TEXT DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES docs(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT,
    law TEXT, law_id TEXT, article_no TEXT, article_num INTEGER, article_sub INTEGER,
    chapter TEXT, section TEXT, status TEXT, effective_date TEXT, version_date TEXT, tokens TEXT
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_article ON chunks(law, article_num, article_sub);
CREATE TABLE IF NOT EXISTS laws (
    law_id TEXT PRIMARY KEY, name TEXT NOT NULL, doc_type TEXT, status TEXT,
    publish_date TEXT, effective_date TEXT, version_date TEXT, department TEXT
);
CREATE INDEX IF NOT EXISTS laws_name ON laws(name);
CREATE TABLE IF NOT EXISTS repeals (
    name TEXT NOT NULL, repealed_on TEXT, successor TEXT, clause TEXT, clause_law TEXT
);
CREATE TABLE IF NOT EXISTS amendments (
    law TEXT NOT NULL, article_num INTEGER NOT NULL, article_sub INTEGER NOT NULL,
    old_num INTEGER, old_sub INTEGER, paragraph INTEGER, action TEXT NOT NULL,
    act TEXT NOT NULL, act_date TEXT, effective TEXT, new_text TEXT
);
CREATE INDEX IF NOT EXISTS amendments_article ON amendments(law, article_num, article_sub);
"""

#: What a chunk's index rows read: its place in the statute (or document) and its text.
_INDEXED = (
    "coalesce(law, '') || ' ' || coalesce(chapter, '') || ' ' || coalesce(section, '') "
    "|| ' ' || coalesce(heading, '') || ' ' || text"
)

#: Article numbers at or past this bound name no article (and never reach SQLite).
MAX_ARTICLE = 100_000

#: Article statuses that are the law in force ("已被修改" marks the current text of a law
#: that has amendments; the text itself is in force).
CURRENT = ("现行有效", "已被修改")


@dataclass
class Chunk:
    """A piece of text the knowledge base can return: a statute article or a passage."""

    text: str
    heading: str = ""
    law: str | None = None
    law_id: str | None = None
    article_no: str | None = None
    article_num: int | None = None
    #: N of 第X条之N (articles inserted by an amendment between X and X+1); 0 for 第X条.
    article_sub: int = 0
    chapter: str | None = None
    section: str | None = None
    status: str | None = None
    effective_date: str | None = None
    version_date: str | None = None
    id: int | None = None
    doc_id: int | None = None
    source: str | None = None
    score: float = 0.0
    via: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_current(self) -> bool:
        return self.status is None or self.status in CURRENT

    @property
    def citation(self) -> str:
        """《law》第N条 for an article, else the source and heading."""
        if self.law and self.article_no:
            return f"《{self.law}》{self.article_no}"
        return " / ".join(x for x in (self.source, self.heading) if x)


_CHUNK_COLUMNS = (
    "text, heading, law, law_id, article_no, article_num, article_sub, chapter, section, "
    "status, effective_date, version_date"
)


class Store:
    """Read and write one KB's SQLite file."""

    def __init__(self, path: Path):
        self.path = path
        # Shared by the threads that answer (a server's request threads, the engine's
        # callers): SQLite built thread-safe ("serialized", sqlite3.threadsafety == 3, as
        # CPython's builds are) serialises the calls itself.
        self.conn = sqlite3.connect(str(path), check_same_thread=sqlite3.threadsafety != 3)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def add_doc(
        self, source: str, title: str, kind: str, content_hash: str, chunks: Iterable[Chunk]
    ) -> int:
        cursor = self.conn.execute(
            "INSERT INTO docs (source, title, kind, content_hash) VALUES (?, ?, ?, ?)",
            (source, title, kind, content_hash),
        )
        doc_id = int(cursor.lastrowid or 0)
        self.conn.executemany(
            f"INSERT INTO chunks (doc_id, ord, {_CHUNK_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (doc_id, i, c.text, c.heading, c.law, c.law_id, c.article_no, c.article_num,
                 c.article_sub, c.chapter, c.section, c.status, c.effective_date, c.version_date)
                for i, c in enumerate(chunks)
            ),
        )  # fmt: skip
        return doc_id

    def doc_hash(self, source: str) -> str | None:
        """The content hash of the document read from `source`, if there is one."""
        row = self.conn.execute("SELECT content_hash FROM docs WHERE source = ?", (source,))
        found = row.fetchone()
        return found[0] if found else None

    def source_of(self, content_hash: str) -> str | None:
        row = self.conn.execute("SELECT source FROM docs WHERE content_hash = ?", (content_hash,))
        found = row.fetchone()
        return found[0] if found else None

    def remove_source(self, source: str) -> int:
        """Remove the documents read from `source` (or from under it, for a folder); how
        many. Laws no longer backed by any article go too."""
        under = source.rstrip("/") + "/"
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM docs WHERE source = ? OR substr(source, 1, ?) = ?",
                (source, len(under), under),
            )
        ]
        self.conn.executemany("DELETE FROM docs WHERE id = ?", ((i,) for i in ids))
        self.conn.execute(
            "DELETE FROM laws WHERE law_id NOT IN "
            "(SELECT DISTINCT law_id FROM chunks WHERE law_id IS NOT NULL)"
        )
        return len(ids)

    def add_laws(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO laws (law_id, name, doc_type, status, publish_date, "
            "effective_date, version_date, department) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def commit(self) -> None:
        self.conn.commit()

    def untokenized(self) -> list[tuple[int, str]]:
        return [
            (r[0], r[1])
            for r in self.conn.execute(f"SELECT id, {_INDEXED} FROM chunks WHERE tokens IS NULL")
        ]

    def indexed_texts(self) -> Iterator[tuple[int, str]]:
        """(chunk id, the text its index rows read: law, chapter, section, heading and
        text) in id order."""
        yield from self.conn.execute(f"SELECT id, {_INDEXED} FROM chunks ORDER BY id")

    def set_tokens(self, rows: Iterable[tuple[str, int]]) -> None:
        self.conn.executemany("UPDATE chunks SET tokens = ? WHERE id = ?", rows)

    def all_tokens(self) -> Iterator[tuple[int, str, bool]]:
        """(chunk id, space-joined tokens, is current) in id order."""
        for row in self.conn.execute("SELECT id, tokens, status FROM chunks ORDER BY id"):
            yield row[0], row[1] or "", row[2] is None or row[2] in CURRENT

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(
            f"SELECT c.id, c.doc_id, d.source, {_prefixed('c.')} FROM chunks c "
            f"JOIN docs d ON d.id = c.doc_id WHERE c.id IN ({marks})",
            ids,
        )
        return {row["id"]: _chunk(row) for row in rows}

    def articles(self, law: str, number: int, sub: int = 0) -> list[Chunk]:
        """Every version of article `number` (之`sub`) of `law`, current ones first."""
        if not 0 < number < MAX_ARTICLE or not 0 <= sub < MAX_ARTICLE:
            return []  # SQLite integers are 64-bit: 第99999999999999999999条 overflows
        rows = self.conn.execute(
            f"SELECT c.id, c.doc_id, d.source, {_prefixed('c.')} FROM chunks c "
            "JOIN docs d ON d.id = c.doc_id WHERE c.law = ? AND c.article_num = ? "
            "AND c.article_sub = ? "
            "ORDER BY c.status NOT IN ('现行有效', '已被修改'), c.version_date DESC",
            (law, number, sub),
        )
        return [_chunk(row) for row in rows]

    def subs(self, law: str, number: int) -> list[int]:
        """The 之N articles inserted after article `number` of `law` (any version)."""
        if not 0 < number < MAX_ARTICLE:
            return []
        rows = self.conn.execute(
            "SELECT DISTINCT article_sub FROM chunks WHERE law = ? AND article_num = ? "
            "AND article_sub > 0 ORDER BY 1",
            (law, number),
        )
        return [r[0] for r in rows]

    def versions(self, law: str) -> list[sqlite3.Row]:
        """The `laws` rows of every version of `law`, oldest first."""
        return list(
            self.conn.execute(
                "SELECT * FROM laws WHERE name = ? ORDER BY version_date, effective_date", (law,)
            )
        )

    def max_article(self, law: str, law_id: str | None = None) -> int:
        """The highest article number of `law` (of its version `law_id` when given)."""
        if law_id is None:
            row = self.conn.execute("SELECT max(article_num) FROM chunks WHERE law = ?", (law,))
        else:
            row = self.conn.execute(
                "SELECT max(article_num) FROM chunks WHERE law_id = ?", (law_id,)
            )
        return int(row.fetchone()[0] or 0)

    def law_versions(self) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM laws ORDER BY name, version_date DESC"))

    def law_names(self) -> list[str]:
        return [
            r[0] for r in self.conn.execute("SELECT DISTINCT law FROM chunks WHERE law IS NOT NULL")
        ]

    def stats(self) -> dict[str, Any]:
        one = lambda sql: self.conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "documents": one("SELECT count(*) FROM docs"),
            "chunks": one("SELECT count(*) FROM chunks"),
            "laws": one("SELECT count(DISTINCT law) FROM chunks WHERE law IS NOT NULL"),
            "articles_current": one(
                "SELECT count(*) FROM chunks WHERE law IS NOT NULL "
                "AND status IN ('现行有效', '已被修改')"
            ),
            "by_status": dict(
                self.conn.execute(
                    "SELECT coalesce(status, 'document'), count(*) FROM chunks GROUP BY 1"
                ).fetchall()
            ),
            "sources": [r[0] for r in self.conn.execute("SELECT DISTINCT source FROM docs")],
        }


def _prefixed(prefix: str) -> str:
    return ", ".join(prefix + c.strip() for c in _CHUNK_COLUMNS.split(","))


def _chunk(row: sqlite3.Row) -> Chunk:
    data = dict(row)
    return Chunk(**data)
