"""Read dataset files of any supported format into validated conversations.

Every input record ends up in exactly one place: accepted, rejected (with its reasons,
for `<output>.rejected.jsonl`), or filtered out by a `--where` condition (counted).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.chat.conversation import Conversation, FieldError, Message
from domainlm.data.readers import (
    CONVERTERS,
    FORMAT_NAMES,
    Mapping,
    detect_format,
    from_columns,
    link_tool_results,
)
from domainlm.data.records import (
    TABULAR,
    Record,
    lone_surrogate,
    read_records,
    without_surrogates,
)
from domainlm.data.validate import check_conversation, fingerprint
from domainlm.errors import DomainLMError, SourceError
from domainlm.io import MAX_LINE_BYTES


@dataclass
class LoadOptions:
    """How to read input files (the `data` commands' shared options)."""

    format: str | None = None
    mapping: Mapping = field(default_factory=Mapping)
    system_prompt: str | None = None
    encoding: str = "utf-8"
    max_line_bytes: int = MAX_LINE_BYTES
    allow_duplicates: bool = False


@dataclass
class Rejected:
    """A record left out, with why."""

    where: str
    reasons: list[str]
    raw: Any = None

    def lines(self) -> list[str]:
        return [f"{self.where}: {reason}" for reason in self.reasons]

    def to_record(self) -> dict[str, Any]:
        return {"source": self.where, "errors": self.reasons, "record": self.raw}


@dataclass
class LoadReport:
    """What reading the inputs produced."""

    conversations: list[Conversation] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    read: int = 0
    filtered: int = 0

    @property
    def reasons(self) -> Counter[str]:
        """How often each kind of problem made a record be rejected."""
        return Counter(reason_kind(reason) for item in self.rejected for reason in item.reasons)


_FIELD_PREFIX = re.compile(r"^[\w\[\].<>-]+: ")
_LOCATION = re.compile(r"\S+:\d+")


def reason_kind(reason: str) -> str:
    """A reason without its field, file locations and hints, so alike problems count together."""
    return _LOCATION.sub("…", _FIELD_PREFIX.sub("", reason)).split(" (")[0]


def load(paths: Iterable[str | Path], options: LoadOptions) -> LoadReport:
    """Convert and validate every record of `paths`.

    Raises:
        DomainLMError: for problems that make a whole file unreadable (missing file, wrong
            encoding of a CSV, an unknown format, a CSV mapping naming a missing column).
    """
    if options.format is not None and options.format not in FORMAT_NAMES:
        raise DomainLMError(
            f"unknown format {options.format!r} (choose from {', '.join(FORMAT_NAMES)})"
        )
    report = LoadReport()
    seen: dict[str, str] = {}
    for path in paths:
        for record, conversation in _convert_file(Path(path), options, report):
            problems = [str(p) for p in check_conversation(conversation)]
            key = fingerprint(conversation)
            if not problems and key in seen and not options.allow_duplicates:
                problems.append(f"duplicate of {seen[key]} (pass --allow-duplicates to keep it)")
            if problems:
                report.rejected.append(Rejected(record.where, problems, record.data))
            else:
                seen.setdefault(key, record.where)
                report.conversations.append(conversation)
    return report


def _convert_file(
    path: Path, options: LoadOptions, report: LoadReport
) -> Iterable[tuple[Record, Conversation]]:
    tabular = path.suffix.lower() in TABULAR
    fmt = "csv" if tabular else options.format
    if fmt == "csv":
        _check_mapping(path, options)
    for record in read_records(path, options.encoding, options.max_line_bytes):
        report.read += 1
        if record.error is not None:
            report.rejected.append(Rejected(record.where, [record.error.message]))
            continue
        field = lone_surrogate(record.data)
        if field is not None:
            reason = f"{field}: invalid Unicode (lone surrogate)"
            report.rejected.append(
                Rejected(record.where, [reason], without_surrogates(record.data))
            )
            continue
        if fmt is None:
            fmt = detect_format(record.data)
            if fmt is None:
                keys = (
                    ", ".join(record.data)
                    if isinstance(record.data, dict)
                    else type(record.data).__name__
                )
                raise SourceError(
                    str(path),
                    record.line,
                    f"cannot tell the dataset format (fields: {keys}); pass --format",
                )
            report.formats[str(path)] = fmt
        report.formats.setdefault(str(path), fmt)
        if fmt == "csv" and not _matches(record.data, options.mapping):
            report.filtered += 1
            continue
        try:
            conversation = _convert(record.data, fmt, options)
        except FieldError as exc:
            report.rejected.append(Rejected(record.where, [str(exc)], record.data))
            continue
        conversation.meta.setdefault("source", record.where)
        yield record, conversation


def _convert(data: Any, fmt: str, options: LoadOptions) -> Conversation:
    if not isinstance(data, dict):
        raise FieldError("<record>", f"expected a JSON object, got {type(data).__name__}")
    conversation = from_columns(data, options.mapping) if fmt == "csv" else CONVERTERS[fmt](data)
    if options.system_prompt and not any(m.role == "system" for m in conversation.messages):
        conversation.messages.insert(0, Message(role="system", content=options.system_prompt))
    return link_tool_results(conversation)


def _check_mapping(path: Path, options: LoadOptions) -> None:
    mapping = options.mapping
    if not mapping.user or not mapping.assistant:
        raise DomainLMError(f"{path}: a CSV/TSV file needs --user COLUMN and --assistant COLUMN")
    for record in read_records(path, options.encoding, options.max_line_bytes):
        if record.data is None:
            continue
        header = list(record.data)
        for option, column in mapping.columns():
            if column not in header:
                raise SourceError(
                    str(path),
                    1,
                    f"column {column!r} not found (columns: {', '.join(header)})",
                    option,
                )
        return


def _matches(row: dict[str, Any], mapping: Mapping) -> bool:
    for column, operator, value in mapping.where:
        equal = str(row.get(column, "")).strip() == value
        if equal != (operator == "="):
            return False
    return True
