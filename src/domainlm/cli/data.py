"""`domainlm data ...`: convert, validate, split, stats and inspect datasets."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from domainlm.chat.conversation import Conversation
from domainlm.chat.formats import FORMAT_CHOICES, ChatFormat, get_format
from domainlm.cli.console import err, out
from domainlm.data.inspect import token_rows
from domainlm.data.pipeline import LoadOptions, LoadReport, Rejected, load
from domainlm.data.readers import FORMAT_NAMES, Mapping, parse_where
from domainlm.data.records import lone_surrogate
from domainlm.data.split import split
from domainlm.data.stats import dataset_stats, token_lengths
from domainlm.errors import DomainLMError
from domainlm.io import write_jsonl
from domainlm.models.tokenizer import load_tokenizer

app = typer.Typer(help="Convert, validate, split and inspect datasets.", no_args_is_help=True)

MAX_SHOWN_ERRORS = 20

Inputs = Annotated[
    list[Path], typer.Argument(metavar="FILE", help="Dataset files (.jsonl, .json, .csv, .tsv).")
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help=f"Input format: {', '.join(FORMAT_NAMES)} (default: detect)."
    ),
]
User = Annotated[
    list[str] | None,
    typer.Option(
        "--user", help="CSV column(s) with the user text; several are joined by newlines."
    ),
]
Assistant = Annotated[
    str | None, typer.Option("--assistant", help="CSV column with the assistant reply.")
]
System = Annotated[str | None, typer.Option("--system", help="CSV column with a system prompt.")]
Where = Annotated[
    list[str] | None,
    typer.Option(
        "--where", help="Keep CSV rows where COLUMN=VALUE (or COLUMN!=VALUE); repeatable."
    ),
]
SystemPrompt = Annotated[
    str | None,
    typer.Option("--system-prompt", help="System prompt for conversations that have none."),
]
Encoding = Annotated[
    str, typer.Option("--encoding", help="Text encoding of the inputs (e.g. gbk).")
]
MaxLine = Annotated[
    float, typer.Option("--max-line-mb", help="Reject input lines longer than this many MiB.")
]
SkipInvalid = Annotated[
    bool,
    typer.Option(
        "--skip-invalid",
        help="Write valid rows; rejected rows go to <output stem>.rejected.jsonl (a file left "
        "there by an earlier run is removed when nothing is rejected).",
    ),
]
AllowDup = Annotated[
    bool, typer.Option("--allow-duplicates", help="Keep exact duplicate conversations.")
]
TOKENIZER_HELP = (
    "Tokenizer: a local model or tokenizer folder, a .gguf file, `default` (the default "
    "model's) or `tiny` (the built-in test tokenizer)."
)
Tokenizer = Annotated[str | None, typer.Option("--tokenizer", help=TOKENIZER_HELP)]
CHAT_FORMAT_HELP = (
    f"Chat format: {', '.join(FORMAT_CHOICES)}; auto is chatglm3 for a ChatGLM3 tokenizer, "
    "else hf (the tokenizer's own chat template)."
)
ChatFmt = Annotated[str, typer.Option("--chat-format", help=CHAT_FORMAT_HELP)]
MaxSeq = Annotated[
    int | None,
    typer.Option(
        "--max-seq-len",
        help="Count conversations longer than this many tokens (needs --tokenizer).",
    ),
]
RemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow the tokenizer folder's own Python code (ChatGLM3)."
    ),
]


def _options(
    fmt: str | None,
    user: list[str] | None,
    assistant: str | None,
    system: str | None,
    where: list[str] | None,
    system_prompt: str | None,
    encoding: str,
    max_line_mb: float,
    allow_duplicates: bool = False,
) -> LoadOptions:
    try:
        conditions = [parse_where(condition) for condition in where or []]
    except ValueError as exc:
        raise DomainLMError(str(exc)) from None
    columns = [c.strip() for item in user or [] for c in item.split(",") if c.strip()]
    if not math.isfinite(max_line_mb) or max_line_mb <= 0:
        raise DomainLMError(f"--max-line-mb must be a positive number, got {max_line_mb:g}")
    if system_prompt is not None and lone_surrogate(system_prompt) is not None:
        raise DomainLMError("--system-prompt: invalid Unicode (the text is not valid UTF-8)")
    # Past what the file and CSV readers can count, a limit is no limit.
    max_line_bytes = int(min(max_line_mb * 1024 * 1024, sys.maxsize - 1))
    return LoadOptions(
        format=fmt,
        mapping=Mapping(columns, assistant, system, conditions),
        system_prompt=system_prompt,
        encoding=encoding,
        max_line_bytes=max_line_bytes,
        allow_duplicates=allow_duplicates,
    )


def _chat_format(
    tokenizer: str | None, chat_format: str, max_seq_len: int | None, trust_remote_code: bool
) -> ChatFormat | None:
    """The chat format to count tokens with, or None without --tokenizer; options checked
    first, so that a bad one is an error even where no tokenizer is given."""
    if chat_format not in FORMAT_CHOICES:
        raise DomainLMError(
            f"--chat-format {chat_format!r}: choose from {', '.join(FORMAT_CHOICES)}"
        )
    if max_seq_len is not None and max_seq_len < 1:
        raise DomainLMError(f"--max-seq-len must be a positive number of tokens, got {max_seq_len}")
    if tokenizer is None:
        if max_seq_len is not None:
            raise DomainLMError("--max-seq-len counts tokens: give --tokenizer too")
        return None
    return get_format(chat_format, load_tokenizer(tokenizer, trust_remote_code))


def _rejected_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejected.jsonl")


def _print_summary(report: LoadReport) -> None:
    for path, fmt in report.formats.items():
        out.print(f"{path}: format {fmt}", markup=False)
    parts = [
        f"read {report.read}",
        f"valid {len(report.conversations)}",
        f"rejected {len(report.rejected)}",
    ]
    if report.filtered:
        parts.append(f"filtered by --where {report.filtered}")
    out.print(", ".join(parts), markup=False)


def _fail_on_rejects(rejected: list[Rejected], total: int, hint: str) -> None:
    shown = [line for item in rejected for line in item.lines()]
    for line in shown[:MAX_SHOWN_ERRORS]:
        err.print(line, markup=False, highlight=False)
    if len(shown) > MAX_SHOWN_ERRORS:
        err.print(f"... and {len(shown) - MAX_SHOWN_ERRORS} more problems", markup=False)
    raise DomainLMError(f"{len(rejected)} of {total} records are invalid; {hint}")


def _write(report: LoadReport, output: Path | None, skip_invalid: bool, inputs: list[Path]) -> None:
    """Write valid rows (and rejects with --skip-invalid); write nothing if rows are invalid."""
    if output is not None and any(output.resolve() == p.resolve() for p in inputs):
        raise DomainLMError(f"{output}: the output would overwrite an input file")
    if report.rejected and not skip_invalid:
        hint = (
            "nothing written (pass --skip-invalid to keep the valid ones)"
            if output
            else "see above"
        )
        _fail_on_rejects(report.rejected, report.read - report.filtered, hint)
    if output is None:
        return
    rejects = _rejected_path(output)
    if report.rejected:  # only with --skip-invalid: otherwise the run stopped above
        write_jsonl(rejects, (item.to_record() for item in report.rejected))
        out.print(
            f"wrote {len(report.rejected)} rejected rows with reasons to {rejects}", markup=False
        )
        for reason, count in report.reasons.most_common(5):
            out.print(f"  {count} x {reason}", markup=False)
    if not report.conversations:
        raise DomainLMError("no valid conversations to write")
    write_jsonl(output, (c.to_record() for c in report.conversations))
    out.print(f"wrote {len(report.conversations)} conversations to {output}", markup=False)
    if not report.rejected:
        _remove_stale(rejects)


def _remove_stale(rejects: Path) -> None:
    """The rejects of an earlier run would pass for this one's, which rejected nothing."""
    if not rejects.is_file():
        return
    try:
        rejects.unlink()
    except OSError as exc:
        err.print(f"warning: cannot remove {rejects} of an earlier run: {exc}", markup=False)
        return
    out.print(f"removed {rejects} of an earlier run: nothing was rejected now", markup=False)


@app.command()
def convert(
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", help="Conversation JSONL to write.")],
    fmt: Format = None,
    user: User = None,
    assistant: Assistant = None,
    system: System = None,
    where: Where = None,
    system_prompt: SystemPrompt = None,
    encoding: Encoding = "utf-8",
    max_line_mb: MaxLine = 16.0,
    skip_invalid: SkipInvalid = False,
    allow_duplicates: AllowDup = False,
) -> None:
    """Convert datasets in any supported format to validated Conversation JSONL."""
    options = _options(
        fmt, user, assistant, system, where, system_prompt, encoding, max_line_mb, allow_duplicates
    )
    report = load(inputs, options)
    _print_summary(report)
    _write(report, output, skip_invalid, inputs)


@app.command()
def validate(
    inputs: Inputs,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the valid rows here.")
    ] = None,
    fmt: Format = None,
    user: User = None,
    assistant: Assistant = None,
    system: System = None,
    where: Where = None,
    system_prompt: SystemPrompt = None,
    encoding: Encoding = "utf-8",
    max_line_mb: MaxLine = 16.0,
    skip_invalid: SkipInvalid = False,
    allow_duplicates: AllowDup = False,
    tokenizer: Tokenizer = None,
    chat_format: ChatFmt = "auto",
    max_seq_len: MaxSeq = None,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Check datasets: role order, tool calls vs schemas, empty turns, duplicates, token lengths."""
    options = _options(
        fmt, user, assistant, system, where, system_prompt, encoding, max_line_mb, allow_duplicates
    )
    chat = _chat_format(tokenizer, chat_format, max_seq_len, trust_remote_code)
    report = load(inputs, options)
    if chat is not None:
        lengths = token_lengths(report.conversations, chat)
        failed = {index for index, _ in lengths.failures}
        report.rejected += [
            Rejected(
                report.conversations[i].meta.get("source", f"conversation {i}"),
                [reason],
                report.conversations[i].to_record(),
            )
            for i, reason in lengths.failures
        ]
        report.conversations = [c for i, c in enumerate(report.conversations) if i not in failed]
        _print_tokens(lengths.summary(max_seq_len), chat.name)
    _print_summary(report)
    _write(report, output, skip_invalid, inputs)
    if not report.rejected:
        out.print("all records valid", markup=False)


def _print_tokens(summary: dict[str, Any], chat_format: str) -> None:
    table = Table(title=f"tokens ({chat_format} format)")
    for column in ("", "min", "mean", "p50", "p95", "max"):
        table.add_column(column, justify="right")
    for key in ("tokens", "trained_tokens"):
        row = summary[key]
        table.add_row(key, *(str(row.get(k, "-")) for k in ("min", "mean", "p50", "p95", "max")))
    out.print(table)
    if "over_max_seq_len" in summary:
        out.print(
            f"{summary['over_max_seq_len']} conversations longer than "
            f"{summary['max_seq_len']} tokens (they will be truncated)",
            markup=False,
        )


def _read_conversations(inputs: list[Path], fmt: str | None = None) -> list[Conversation]:
    report = load(inputs, LoadOptions(format=fmt, allow_duplicates=True))
    if report.rejected:
        _fail_on_rejects(report.rejected, report.read, "run `domainlm data validate` first")
    return report.conversations


@app.command("split")
def split_command(
    inputs: Inputs,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", "-o", help="Folder for train/dev/test.jsonl.")
    ],
    dev: Annotated[float, typer.Option(help="Dev share (below 1) or count.")] = 0.05,
    test: Annotated[float, typer.Option(help="Test share (below 1) or count.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Shuffle seed.")] = 42,
) -> None:
    """Split conversations into seeded train/dev/test files."""
    parts = split(_read_conversations(inputs), dev, test, seed)
    for name, items in parts.items():
        write_jsonl(out_dir / f"{name}.jsonl", (c.to_record() for c in items))
        out.print(f"{name}: {len(items)} -> {out_dir / f'{name}.jsonl'}", markup=False)


@app.command()
def stats(
    inputs: Inputs,
    tokenizer: Tokenizer = None,
    chat_format: ChatFmt = "auto",
    max_seq_len: MaxSeq = None,
    trust_remote_code: RemoteCode = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts by role and tool, text lengths and (with --tokenizer) token lengths."""
    chat = _chat_format(tokenizer, chat_format, max_seq_len, trust_remote_code)
    conversations = _read_conversations(inputs)
    result = dataset_stats(conversations)
    if chat is not None:
        lengths = token_lengths(conversations, chat)
        result["tokens"] = lengths.summary(max_seq_len)
        result["tokens"]["chat_format"] = chat.name
        result["tokens"]["unrenderable"] = len(lengths.failures)
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    out.print(
        f"conversations: {result['conversations']} ({result['with_tools']} with tools)",
        markup=False,
    )
    out.print(
        "messages: " + ", ".join(f"{k} {v}" for k, v in result["messages"].items()), markup=False
    )
    if result["tool_calls"]:
        out.print(
            "tool calls: " + ", ".join(f"{k} {v}" for k, v in result["tool_calls"].items()),
            markup=False,
        )
    table = Table(title="characters per message")
    for column in ("role", "min", "mean", "p50", "p95", "max"):
        table.add_column(column, justify="right")
    for role, row in result["chars"].items():
        table.add_row(role, *(str(row[k]) for k in ("min", "mean", "p50", "p95", "max")))
    out.print(table)
    if chat is not None:
        _print_tokens(result["tokens"], chat.name)


@app.command()
def inspect(
    input_file: Annotated[Path, typer.Argument(metavar="FILE", help="Dataset file.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help=TOKENIZER_HELP)],
    chat_format: Annotated[
        str, typer.Option("--format", "--chat-format", help=CHAT_FORMAT_HELP)
    ] = "auto",
    index: Annotated[int, typer.Option("--index", "-n", help="Which conversation (0-based).")] = 0,
    input_format: Annotated[
        str | None, typer.Option("--input-format", help="Dataset format (default: detect).")
    ] = None,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Show each token of one rendered conversation (text, id, label); trained ones highlighted."""
    conversations = _read_conversations([input_file], input_format)
    if not 0 <= index < len(conversations):
        raise DomainLMError(f"--index {index}: {input_file} has {len(conversations)} conversations")
    chat = get_format(chat_format, load_tokenizer(tokenizer, trust_remote_code))
    rows = token_rows(conversations[index], chat)
    table = Table(title=f"{input_file} #{index} ({chat.name}); trained tokens in green")
    for column in ("pos", "token", "id", "label"):
        table.add_column(column, justify="right" if column != "token" else "left")
    for row in rows:
        style = "bold green" if row.trained else "dim"
        table.add_row(
            str(row.position),
            Text(repr(row.text)[1:-1]),
            str(row.token_id),
            str(row.label) if row.trained else "-100",
            style=style,
        )
    out.print(table)
    trained = sum(r.trained for r in rows)
    out.print(
        f"{len(rows)} tokens, {trained} trained ({trained / max(len(rows), 1):.0%})", markup=False
    )
