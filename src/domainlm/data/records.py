"""Raw records from files, each with the line it starts on.

JSONL is read line by line (a broken line is one bad record, not a broken file); a JSON
array is decoded element by element so each record keeps its real line number; CSV/TSV
rows keep the line they start on.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError, SourceError
from domainlm.io import MAX_LINE_BYTES, read_lines

TABULAR = {".csv": ",", ".tsv": "\t"}
# JSON may escape half of a UTF-16 surrogate pair ("\ud800"): Python reads it as a str that
# no UTF-8 file can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Record:
    """One raw record, or the error that stopped it from being read."""

    path: str
    line: int
    data: Any = None
    error: SourceError | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_records(
    path: str | Path, encoding: str = "utf-8", max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[Record]:
    """Records of a .jsonl, .json, .csv or .tsv file (by extension; JSONL otherwise)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TABULAR:
        yield from _tabular(path, TABULAR[suffix], encoding, max_line_bytes)
    elif suffix == ".json":
        yield from _json_document(path, encoding, max_line_bytes)
    else:
        yield from _jsonl(path, encoding, max_line_bytes)


def read_texts(path: str | Path, fields: Sequence[str]) -> Iterator[str]:
    """The non-empty text under the first of `fields` that each record has.

    Raises:
        DomainLMError: naming the line of an unreadable record or one without the field.
    """
    for record in read_records(path):
        if record.error is not None:
            raise record.error
        data = record.data
        value = next((data[f] for f in fields if isinstance(data, dict) and f in data), None)
        if not isinstance(value, str):
            raise DomainLMError(f"{record.where}: no text field (one of {', '.join(fields)})")
        if value.strip():
            yield value


def lone_surrogate(value: Any) -> str | None:
    """The field of a decoded JSON record holding a lone surrogate (invalid Unicode), or None.

    Such text cannot be hashed or written as UTF-8, so the record is rejected up front.
    Walked with a stack: records nest as deep as the JSON decoder allows.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        field, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return field or "<record>"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                name = f"{field}.{key}" if field else str(key)
                if _SURROGATE.search(str(key)):
                    return f"{field or '<record>'}: key {str(key)!a}"
                children.append((name, child))
            stack += reversed(children)  # the first field is looked at first
        elif isinstance(item, list):
            stack += reversed([(f"{field}[{i}]", child) for i, child in enumerate(item)])
    return None


def without_surrogates(value: Any) -> Any:
    """`value` with each lone surrogate replaced by U+FFFD, so it can be written as UTF-8."""
    return json.loads(_SURROGATE.sub("\ufffd", json.dumps(value, ensure_ascii=False)))


def _jsonl(path: Path, encoding: str, max_line_bytes: int) -> Iterator[Record]:
    name = str(path)
    for line_no, text in read_lines(path, encoding, max_line_bytes):
        if isinstance(text, SourceError):
            yield Record(name, line_no, error=text)
        elif text.strip():
            try:
                yield Record(name, line_no, json.loads(text))
            except json.JSONDecodeError as exc:
                error = SourceError(
                    name, line_no, f"not valid JSON: {exc.msg} (column {exc.colno})"
                )
                yield Record(name, line_no, error=error)
            except RecursionError:
                yield Record(
                    name, line_no, error=SourceError(name, line_no, "JSON nested too deeply")
                )


def _json_document(path: Path, encoding: str, max_line_bytes: int) -> Iterator[Record]:
    """A JSON array of records (or one record), each reported at its own line."""
    name = str(path)
    text = "".join(_strict_lines(path, encoding, max_line_bytes))
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    if index == len(text):
        return
    if text[index] != "[":
        yield Record(name, 1 + text.count("\n", 0, index), _decode_one(decoder, text, index, name))
        return
    index, line = index + 1, 1 + text.count("\n", 0, index)
    while True:
        start = _skip_space(text, index)
        if start < len(text) and text[start] == "]":
            return
        line += text.count("\n", index, start)
        value = _decode_one(decoder, text, start, name)
        end = decoder.raw_decode(text, start)[1]
        yield Record(name, line, value)
        line += text.count("\n", start, end)
        index = _skip_space(text, end)
        if index < len(text) and text[index] == ",":
            index += 1
        elif index < len(text) and text[index] == "]":
            return
        else:
            where = 1 + text.count("\n", 0, index)
            raise SourceError(name, where, "not valid JSON: expected ',' or ']' between records")


def _decode_one(decoder: json.JSONDecoder, text: str, index: int, name: str) -> Any:
    try:
        return decoder.raw_decode(text, index)[0]
    except json.JSONDecodeError as exc:
        raise SourceError(
            name, exc.lineno, f"not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None


def _strict_lines(path: Path, encoding: str, max_line_bytes: int) -> Iterator[str]:
    """Every line of a file that must be read whole; the first bad line raises."""
    for _, text in read_lines(path, encoding, max_line_bytes):
        if isinstance(text, SourceError):
            raise text
        yield text


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _tabular(path: Path, delimiter: str, encoding: str, max_line_bytes: int) -> Iterator[Record]:
    """CSV/TSV rows as dicts keyed by the header; quoted fields may span lines."""
    name = str(path)
    csv.field_size_limit(max_line_bytes)

    # A wrong encoding makes the whole file unreadable, so a bad line stops it.
    reader = csv.reader(_strict_lines(path, encoding, max_line_bytes), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [column.strip() for column in header]
        start = reader.line_num + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) != len(header):
                    message = f"row has {len(row)} fields, the header has {len(header)}"
                    yield Record(name, start, error=SourceError(name, start, message))
                else:
                    yield Record(name, start, dict(zip(header, row, strict=True)))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SourceError(name, reader.line_num, f"not valid CSV: {exc}") from None


def columns_of(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """The header of a CSV/TSV file."""
    for record in read_records(path, encoding):
        if record.data is not None:
            return list(record.data)
    raise DomainLMError(f"{path}: no rows")
