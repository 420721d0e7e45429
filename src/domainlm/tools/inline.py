"""DISC-FinLLM's inline tool style: the model writes `[Calculator(expression)→` and stops;
we compute, append `result]`, and let it continue.

`complete` drives any text generator through that loop; `fill` does the same to a finished
text (useful to check or repair an answer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from domainlm.tools.calculator import CalculatorError, evaluate

ARROW = "→"
_OPEN_CALL = re.compile(r"\[Calculator\((?P<expr>[^\[\]]*)\)\s*(?:->|→)\s*$")
_ANY_CALL = re.compile(r"\[Calculator\((?P<expr>[^\[\]]*)\)\s*(?:->|→)\s*(?P<result>[^\]]*)\]")
#: Inline calls allowed in one reply.
MAX_CALLS = 16


@dataclass
class InlineCall:
    expression: str
    result: str
    ok: bool


def _compute(expression: str) -> tuple[str, bool]:
    try:
        value = evaluate(expression)
    except CalculatorError as exc:
        return f"error: {exc}", False
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-4 or abs(value) >= 1e15):
            return f"{value:.6g}", True
        return f"{value:.6f}".rstrip("0").rstrip("."), True
    return str(value), True


def complete(
    generate: Callable[[str, list[str]], str], prompt: str
) -> tuple[str, list[InlineCall]]:
    """Generate after `prompt`, stopping at `→`; each time the text ends in an open
    `[Calculator(...)→`, insert the computed result and go on.

    Args:
        generate: (text so far, stop strings) -> continuation, without the stop string.
    """
    text = ""
    calls: list[InlineCall] = []
    for _ in range(MAX_CALLS + 1):
        piece = generate(prompt + text, [ARROW])
        text += piece
        match = _OPEN_CALL.search(text + ARROW)
        if not match or len(calls) == MAX_CALLS:
            break
        result, ok = _compute(match.group("expr"))
        calls.append(InlineCall(match.group("expr"), result, ok))
        text += f"{ARROW}{result}]"
    return text, calls


def fill(text: str) -> tuple[str, list[InlineCall]]:
    """`text` with every `[Calculator(expr)→...]` result recomputed."""
    calls: list[InlineCall] = []

    def replace(match: re.Match[str]) -> str:
        result, ok = _compute(match.group("expr"))
        calls.append(InlineCall(match.group("expr"), result, ok))
        return f"[Calculator({match.group('expr')}){ARROW}{result}]"

    return _ANY_CALL.sub(replace, text), calls
