"""Tool-call tasks: given tools and a request, is the model's first call the gold one?

Sources: ToolAlpaca files (a list of APIs, each with `Function_Description` — per function
a description and `Parameters: {name: "type. [One of: [...].] description"}` — its
`Instructions` and `Golden_Answers`, the first action of which is the gold call), and
Conversation JSONL whose first assistant message with `tool_calls` is the gold call (the
messages before it are the prompt, its `tools` are offered).

Scores per item: `name` (the first call names the gold function), `arguments` (the share of
the gold arguments the call gives with the same value; 0 when the name is wrong), `correct`
(name and every argument right, nothing extra), `called` (any call at all). Values compare
after normalising: numbers as numbers ("1" = 1), strings case- and space-insensitively, and
gold arguments left empty ("", null: ToolAlpaca's "not given") are not expected.
"""

from __future__ import annotations

import json
import re
from typing import Any

from domainlm.errors import SourceError

_PARAM = re.compile(r"^\s*(\w+)\.\s*(?:One of:\s*\[(.*?)\]\.)?\s*(.*)$", re.DOTALL)
_TYPES = {
    "string": "string", "integer": "integer", "number": "number", "float": "number",
    "boolean": "boolean", "bool": "boolean", "array": "array", "object": "object",
}  # fmt: skip


def toolalpaca_tools(functions: dict[str, str]) -> list[dict[str, Any]]:
    """OpenAI tool specs from ToolAlpaca's `Function_Description`."""
    tools = []
    for name, text in functions.items():
        description, _, rest = text.partition("\nParameters:")
        raw = rest.split("\nOutput:")[0].strip() if rest else "{}"
        try:
            parameters = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            parameters = {}
        properties = {}
        for key, spec in parameters.items() if isinstance(parameters, dict) else []:
            match = _PARAM.match(str(spec))
            kind = _TYPES.get(match.group(1).lower(), "string") if match else "string"
            prop: dict[str, Any] = {"type": kind}
            if match and match.group(2):
                prop["enum"] = [v.strip() for v in match.group(2).split(",")]
            prop["description"] = (match.group(3) if match else str(spec)).strip()
            properties[key] = prop
        tools.append({"type": "function", "function": {
            "name": name, "description": description.strip(),
            "parameters": {"type": "object", "properties": properties},
        }})  # fmt: skip
    return tools


def read_toolalpaca(rows: Any, source: str) -> list[dict[str, Any]]:
    """Items {id, messages, tools, gold: {name, arguments}} of a ToolAlpaca file."""
    if not isinstance(rows, list):
        raise SourceError(source, None, "expected a list of APIs (ToolAlpaca's layout)")
    items = []
    for n, api in enumerate(rows, 1):
        if not isinstance(api, dict) or "Function_Description" not in api:
            raise SourceError(source, n, "no Function_Description", "Function_Description")
        instructions = api.get("Instructions") or []
        golden = api.get("Golden_Answers") or []
        if len(instructions) != len(golden):
            raise SourceError(source, n, "Instructions and Golden_Answers differ in length")
        tools = toolalpaca_tools(api["Function_Description"])
        for i, (instruction, actions) in enumerate(zip(instructions, golden, strict=True)):
            if not actions:
                continue  # nothing to call: not a tool-call item
            first = actions[0]
            try:
                arguments = json.loads(first.get("Action_Input") or "{}")
            except json.JSONDecodeError:
                raise SourceError(
                    source, n, f"Golden_Answers[{i}]: Action_Input is not JSON"
                ) from None
            items.append({
                "id": f"{api.get('Name', n)}/{i}",
                "messages": [{"role": "user", "content": instruction}],
                "tools": tools,
                "gold": {"name": first.get("Action", ""), "arguments": arguments},
            })  # fmt: skip
    return items


def read_conversations(rows: list[Any], source: str) -> list[dict[str, Any]]:
    """Items of Conversation JSONL rows whose assistant calls a tool."""
    items = []
    for n, row in enumerate(rows, 1):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list):
            raise SourceError(source, n, "missing or not a list", "messages")
        at = next(
            (
                i
                for i, m in enumerate(messages)
                if m.get("role") == "assistant" and m.get("tool_calls")
            ),
            None,
        )
        if at is None:
            continue
        call = messages[at]["tool_calls"][0]
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise SourceError(source, n, "the gold call's arguments are not JSON") from None
        items.append({
            "id": str(row.get("id", n)), "messages": messages[:at],
            "tools": row.get("tools") or [],
            "gold": {"name": function.get("name", ""), "arguments": arguments},
        })  # fmt: skip
    return items


def _normal(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = " ".join(value.split()).casefold()
        try:
            return float(text)
        except ValueError:
            return text
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v not in ("", None)}
    return value


def score_call(calls: list[dict[str, Any]], gold: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """(the first call as text, scores) of a reply's calls against the gold call."""
    if not calls:
        return "", {"correct": 0.0, "name": 0.0, "arguments": 0.0, "called": 0.0}
    first = calls[0]
    shown = json.dumps(first, ensure_ascii=False)
    if first["name"] != gold["name"]:
        return shown, {"correct": 0.0, "name": 0.0, "arguments": 0.0, "called": 1.0}
    want, got = _normal(gold["arguments"] or {}), _normal(first.get("arguments") or {})
    right = sum(1 for k, v in want.items() if k in got and got[k] == v)
    share = right / len(want) if want else 1.0
    return shown, {"correct": float(want == got), "name": 1.0, "arguments": share, "called": 1.0}
