"""`@tool` turns a typed function into a tool with a JSON schema; `Toolset` dispatches calls.

```python
@tool
def normal_cdf(x: Annotated[float, "value"], mean: Annotated[float, "mean"] = 0.0) -> float:
    '''P(X <= x) for a normal distribution.'''
```
The schema comes from the signature (`Annotated[type, "description"]`, defaults make a
parameter optional) and the docstring's first paragraph. A call is validated against the
schema before the function runs, runs with a time limit, and every failure (unknown tool,
bad arguments, an exception, a timeout) comes back as an error observation the model can
read, never as an exception in the caller.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

import jsonschema

from domainlm.chat.conversation import ToolCall, ToolSpec
from domainlm.errors import DomainLMError

#: Seconds a tool may run before its call is answered with a timeout error.
DEFAULT_TIMEOUT = 10.0
#: Longest observation text handed back to the model.
MAX_OBSERVATION_CHARS = 4000


@dataclass
class Tool:
    """A callable with the schema the model sees."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any]
    timeout: float = DEFAULT_TIMEOUT
    #: It computes on numbers the user gives (a calculator): a call none of whose numbers
    #: is in the conversation is not run (see `domainlm.tools.grounding`).
    grounded: bool = False

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


@dataclass
class Observation:
    """What a tool call produced: a result, or an error the model is shown instead."""

    name: str
    arguments: dict[str, Any]
    content: str
    ok: bool
    seconds: float = 0.0
    raw: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arguments": self.arguments,
            "content": self.content,
            "ok": self.ok,
            "seconds": round(self.seconds, 4),
        }


_SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
}


def _schema(annotation: Any, where: str) -> dict[str, Any]:
    origin = get_origin(annotation)
    if annotation in _SCALARS:
        return dict(_SCALARS[annotation])
    if origin is Literal:
        values = list(get_args(annotation))
        return {"enum": values}
    if origin in (list, tuple) or annotation in (list, tuple):
        args = get_args(annotation)
        item = _schema(args[0], where) if args else {}
        return {"type": "array", "items": item}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _schema(options[0], where)
        return {"anyOf": [_schema(a, where) for a in options]}
    raise DomainLMError(f"{where}: unsupported parameter type {annotation!r}")


def tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    grounded: bool = False,
) -> Any:
    """Make `function` a `Tool` (usable as `@tool` or `@tool(name=..., timeout=...)`);
    `grounded=True` for tools that compute on the user's numbers."""

    def wrap(fn: Callable[..., Any]) -> Tool:
        tool_name = name or fn.__name__
        hints = typing.get_type_hints(fn, include_extras=True)
        properties: dict[str, Any] = {}
        required = []
        for param in inspect.signature(fn).parameters.values():
            hint = hints.get(param.name)
            if hint is None:
                raise DomainLMError(f"tool {tool_name}: parameter {param.name} has no type")
            description = ""
            if get_origin(hint) is typing.Annotated:
                hint, *extra = get_args(hint)
                description = next((e for e in extra if isinstance(e, str)), "")
            schema = _schema(hint, f"tool {tool_name}: {param.name}")
            if description:
                schema["description"] = description
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
            else:
                schema["default"] = param.default
            properties[param.name] = schema
        doc = inspect.getdoc(fn) or ""
        parameters: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "required": required,
        }
        parameters["additionalProperties"] = False
        description = " ".join(doc.split("\n\n")[0].split())
        return Tool(tool_name, description, parameters, fn, timeout, grounded)

    return wrap(function) if function is not None else wrap


class Toolset:
    """Tools by name, and safe calls of them."""

    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="tool")
        for item in tools or []:
            self.add(item)

    def add(self, item: Tool) -> None:
        if item.name in self.tools:
            raise DomainLMError(f"two tools named {item.name}")
        self.tools[item.name] = item

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    @property
    def specs(self) -> list[ToolSpec]:
        return [item.spec for item in self.tools.values()]

    def call(self, call: ToolCall) -> Observation:
        """Run `call`; failures become error observations (the loop goes on)."""
        import time

        started = time.perf_counter()
        item = self.tools.get(call.name)
        if item is None:
            known = ", ".join(self.tools) or "none"
            return Observation(
                call.name,
                call.arguments,
                f"error: unknown tool {call.name!r} (tools: {known})",
                False,
            )
        try:
            jsonschema.validate(call.arguments, item.parameters)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
            return Observation(call.name, call.arguments, f"error: {where}: {exc.message}", False)
        future = self._pool.submit(item.function, **call.arguments)
        try:
            result = future.result(timeout=item.timeout)
        except concurrent.futures.TimeoutError:
            return Observation(
                call.name,
                call.arguments,
                f"error: {call.name} timed out after {item.timeout:g} s",
                False,
                item.timeout,
            )
        except Exception as exc:  # a tool's own failure is shown to the model, not raised
            return Observation(
                call.name,
                call.arguments,
                f"error: {type(exc).__name__}: {exc}",
                False,
                time.perf_counter() - started,
            )
        content = (
            result
            if isinstance(result, str)
            else json.dumps(result, ensure_ascii=False, default=str)
        )
        if len(content) > MAX_OBSERVATION_CHARS:
            content = content[:MAX_OBSERVATION_CHARS] + "…(truncated)"
        return Observation(
            call.name, call.arguments, content, True, time.perf_counter() - started, result
        )
