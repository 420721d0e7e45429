"""The one conversation type every stage speaks: OpenAI chat semantics plus a loss flag.

Stored as JSONL, one conversation a line, in OpenAI's shape so other tools read it too:
`{"messages": [...], "tools": [{"type": "function", "function": {...}}]}` where assistant
`tool_calls[].function.arguments` is a JSON string and tool results carry `tool_call_id`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


class FieldError(ValueError):
    """A record field that cannot be read; `field` is a dotted path such as `messages[2].role`."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ToolSpec(BaseModel):
    """A tool the model may call: a name, a description and a JSON schema for its arguments.

    Or a tool described only in prose, as ChatGLM3's ToolAlpaca converter writes them
    (`"tools": ["getWeather: Get the weather.\\nParameters: {...}"]`): then `text` holds that
    string as given, there is no name or schema, and calls of the functions it describes are
    checked by name only (`mentions`).
    """

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    text: str | None = None

    @model_validator(mode="after")
    def _name_or_text(self) -> ToolSpec:
        if (self.text is None) == (not self.name):
            raise ValueError("a tool has either a name (and a schema) or a prose text, not both")
        return self

    def function(self) -> dict[str, Any]:
        """`{name, description, parameters}`: OpenAI's `function` object."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def to_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": self.function()}

    def to_record(self) -> dict[str, Any] | str:
        """As stored: OpenAI's shape, or the prose string unchanged."""
        return self.text if self.text is not None else self.to_openai()

    def mentions(self, name: str) -> bool:
        """Whether this prose tool names the function `name` (as a whole word)."""
        if self.text is None or not name:
            return False
        return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", self.text) is not None


class ToolCall(BaseModel):
    """One call of a tool by the assistant, with its arguments already parsed."""

    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {
                "name": self.name,
                "arguments": json.dumps(self.arguments, ensure_ascii=False),
            },
        }


class Message(BaseModel):
    """One turn. `loss` overrides the default (train assistant turns, nothing else)."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    loss: bool | None = None

    @property
    def trained(self) -> bool:
        """Whether this message's tokens carry loss."""
        return self.loss if self.loss is not None else self.role == "assistant"

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            record["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        if self.tool_call_id is not None:
            record["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            record["name"] = self.name
        if self.loss is not None:
            record["loss"] = self.loss
        return record


class Conversation(BaseModel):
    """A list of messages, the tools available in it, and where it came from."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def tool(self, name: str) -> ToolSpec | None:
        """The tool with a schema called `name` (prose tools have no name)."""
        return next((s for s in self.tools if s.text is None and s.name == name), None)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if self.id is not None:
            record["id"] = self.id
        record["messages"] = [message.to_record() for message in self.messages]
        if self.tools:
            record["tools"] = [spec.to_record() for spec in self.tools]
        if self.meta:
            record["meta"] = self.meta
        return record

    @classmethod
    def from_record(cls, record: Any) -> Conversation:
        """Read a record in the stored (OpenAI) shape.

        Raises:
            FieldError: naming the first field that cannot be read.
        """
        if not isinstance(record, dict):
            raise FieldError("<record>", f"expected a JSON object, got {type(record).__name__}")
        unknown = set(record) - {"id", "messages", "tools", "meta"}
        if unknown:
            raise FieldError(sorted(unknown)[0], "unknown field")
        messages = record.get("messages")
        if not isinstance(messages, list):
            raise FieldError("messages", "missing or not a list")
        meta = record.get("meta", {})
        if not isinstance(meta, dict):
            raise FieldError("meta", "expected an object")
        return cls(
            messages=[read_message(item, f"messages[{i}]") for i, item in enumerate(messages)],
            tools=read_tools(record.get("tools"), "tools"),
            id=None if record.get("id") is None else str(record["id"]),
            meta=meta,
        )


def read_tools(value: Any, field: str) -> list[ToolSpec]:
    """Tools as OpenAI (`{"type": "function", "function": {...}}`) or flat `{name, ...}` dicts,
    or prose strings (ChatGLM3's ToolAlpaca data), kept as given.

    A JSON string holding that list is accepted too (ShareGPT stores tools that way).
    """
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(field, f"not valid JSON: {exc.msg}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise FieldError(field, "expected a list of tools")
    specs = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if isinstance(item, str):
            specs.append(ToolSpec(text=item))
            continue
        if not isinstance(item, dict):
            raise FieldError(where, "expected an object or a text")
        if "function" in item and isinstance(item["function"], dict):
            item, where = item["function"], f"{where}.function"
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise FieldError(f"{where}.name", "missing tool name")
        parameters = item.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise FieldError(f"{where}.parameters", "expected a JSON schema object")
        description = item.get("description", "")
        specs.append(ToolSpec(name=name, description=str(description), parameters=parameters))
    return specs


def parse_arguments(value: Any, field: str) -> dict[str, Any]:
    """Tool-call arguments from a JSON string or an object; always a dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(field, f"arguments are not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise FieldError(field, f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text parts
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise FieldError(f"{field}[{i}]", "only text content parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise FieldError(field, f"expected text, got {type(value).__name__}")


def read_message(item: Any, field: str) -> Message:
    """One OpenAI-shaped message; raises FieldError naming the bad field."""
    if not isinstance(item, dict):
        raise FieldError(field, "expected an object")
    role = item.get("role")
    if role not in ROLES:
        known = ", ".join(ROLES)
        raise FieldError(f"{field}.role", f"unknown role {role!r} (expected one of {known})")
    extra = set(item) - {"role", "content", "tool_calls", "tool_call_id", "name", "loss"}
    if extra:
        raise FieldError(f"{field}.{sorted(extra)[0]}", "unknown field")
    calls = []
    raw_calls = item.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise FieldError(f"{field}.tool_calls", "expected a list")
    if raw_calls and role != "assistant":
        raise FieldError(f"{field}.tool_calls", f"only assistant messages call tools, not {role}")
    for j, call in enumerate(raw_calls):
        where = f"{field}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise FieldError(where, "expected an object")
        function = call.get("function", call)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise FieldError(f"{where}.function.name", "missing tool name")
        arguments = parse_arguments(function.get("arguments"), f"{where}.function.arguments")
        call_id = call.get("id")
        calls.append(
            ToolCall(
                name=function["name"],
                arguments=arguments,
                id=None if call_id is None else str(call_id),
            )
        )
    loss = item.get("loss")
    if loss is not None and not isinstance(loss, bool):
        raise FieldError(f"{field}.loss", "expected true or false")
    name = item.get("name")
    call_id = item.get("tool_call_id")
    return Message(
        role=role,
        content=_text(item.get("content"), f"{field}.content"),
        tool_calls=calls,
        tool_call_id=None if call_id is None else str(call_id),
        name=None if name is None else str(name),
        loss=loss,
    )
