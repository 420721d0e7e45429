"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from typing import Any


class DomainLMError(Exception):
    """A problem with the user's input or setup, reported without a traceback."""


class SourceError(DomainLMError):
    """A problem located in an input file: `file:line: field: message`."""

    def __init__(self, path: str, line: int | None, message: str, field: str | None = None):
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class ToolCallParseError(DomainLMError):
    """Model text that looks like a tool call but cannot be read as one."""


def first_error(exc: Any, messages: dict[str, str] | None = None) -> str:
    """`where: what` of a pydantic ValidationError's first error, for a one-line message:
    the key's dotted path, "unknown setting" for a key the model forbids, and `messages`
    in place of pydantic's text for other error types."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    overrides = {"extra_forbidden": "unknown setting", **(messages or {})}
    message = overrides.get(error["type"], message)
    return f"{where}: {message}" if where else message
