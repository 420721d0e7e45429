"""Rules a training conversation must follow; each problem names the field it is about.

Checked: roles in a valid order (system only first; a tool result only after the call it
answers), at least one trained assistant turn, no empty turns, tool calls naming tools the
conversation declares with arguments matching the tool's JSON schema (a tool described only
in prose, as ChatGLM3's ToolAlpaca data has them, must name the function called), and
duplicates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import jsonschema
import referencing.exceptions

from domainlm.chat.conversation import Conversation
from domainlm.chat.formats.chatglm3 import INTERPRETER


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a conversation."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def check_conversation(conversation: Conversation) -> list[Problem]:
    """Every problem in `conversation`, in message order (empty when it is valid)."""
    problems: list[Problem] = []
    messages = conversation.messages
    if not messages:
        return [Problem("messages", "no messages")]
    problems += _check_tools(conversation)
    pending: dict[str, str] = {}  # call id -> tool name, calls not yet answered
    answered: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role == "system" and i > 0:
            problems.append(Problem(f"{where}.role", "a system message may only come first"))
        if message.role == "tool":
            problems += _check_result(message.tool_call_id, pending, answered, where)
        elif message.role == "user" and pending:
            problems.append(
                Problem(where, f"user turn before the result of call {next(iter(pending))}")
            )
            pending.clear()
        if message.role == "assistant":
            if not message.content.strip() and not message.tool_calls:
                problems.append(Problem(f"{where}.content", "empty assistant message"))
            for j, call in enumerate(message.tool_calls):
                problems += _check_call(
                    conversation, call.name, call.arguments, f"{where}.tool_calls[{j}]"
                )
                if call.id is not None:
                    pending[call.id] = call.name
        elif not message.content.strip() and message.role != "tool":
            problems.append(Problem(f"{where}.content", f"empty {message.role} message"))
    if not any(m.trained and m.role == "assistant" for m in messages) and not any(
        m.loss for m in messages
    ):
        problems.append(Problem("messages", "no trained assistant turn"))
    return problems


def _check_result(
    call_id: str | None, pending: dict[str, str], answered: set[str], where: str
) -> list[Problem]:
    if call_id is not None and call_id in pending:
        answered.add(call_id)
        del pending[call_id]
        return []
    if call_id in answered:
        return [Problem(f"{where}.tool_call_id", f"call {call_id} already has a result")]
    if call_id is not None:
        return [Problem(f"{where}.tool_call_id", f"no earlier call has id {call_id!r}")]
    return [Problem(where, "tool result with no tool call before it")]


def _check_tools(conversation: Conversation) -> list[Problem]:
    problems = []
    seen: set[str] = set()
    for k, spec in enumerate(conversation.tools):
        if spec.text is not None:  # described in prose: no name, no schema
            if not spec.text.strip():
                problems.append(Problem(f"tools[{k}]", "empty tool description"))
            continue
        if spec.name in seen:
            problems.append(Problem(f"tools[{k}].name", f"tool {spec.name!r} is declared twice"))
        seen.add(spec.name)
        try:
            jsonschema.validators.validator_for(spec.parameters).check_schema(spec.parameters)
        except jsonschema.SchemaError as exc:
            problems.append(
                Problem(f"tools[{k}].parameters", f"not a valid JSON schema: {exc.message}")
            )
    return problems


def _check_call(
    conversation: Conversation, name: str, arguments: dict[str, Any], where: str
) -> list[Problem]:
    spec = conversation.tool(name)
    if spec is None and name == INTERPRETER:
        return []  # ChatGLM3's code interpreter is a mode of the model, not a declared tool
    if spec is None and any(s.mentions(name) for s in conversation.tools):
        return []  # a function of a tool described in prose: it has no schema to check against
    if spec is None:
        declared = ", ".join(s.name for s in conversation.tools if s.text is None) or "none"
        prose = sum(s.text is not None for s in conversation.tools)
        if prose:
            declared += f"; {prose} described in prose, none naming it"
        return [
            Problem(
                f"{where}.function.name",
                f"calls tool {name!r}, not declared (declared: {declared})",
            )
        ]
    validator_cls = jsonschema.validators.validator_for(spec.parameters)
    try:
        validator_cls.check_schema(spec.parameters)
        errors = sorted(
            validator_cls(spec.parameters).iter_errors(arguments), key=lambda e: list(e.path)
        )
    except jsonschema.SchemaError:
        return []  # reported once, on the tool
    except jsonschema.exceptions.UnknownType as exc:
        return [Problem(f"{where}.function.arguments", f"schema uses unknown type {exc.type!r}")]
    except referencing.exceptions.Unresolvable as exc:
        return [
            Problem(f"{where}.function.arguments", f"schema reference cannot be resolved: {exc}")
        ]
    return [
        Problem(f"{where}.function.arguments" + "".join(f".{p}" for p in error.path), error.message)
        for error in errors[:3]
    ]


def fingerprint(conversation: Conversation) -> str:
    """A hash of what is trained on (messages and tools), ignoring ids and metadata."""
    record = conversation.to_record()
    for message in record["messages"]:
        for call in message.get("tool_calls", []):
            call.pop("id", None)
        message.pop("tool_call_id", None)
    payload = json.dumps(
        [record["messages"], record.get("tools", [])], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()
