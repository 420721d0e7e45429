"""Arithmetic without eval: expressions are parsed with `ast` and walked over a whitelist.

Allowed: numbers, + - * / ** % //, parentheses, unary +/-, and the functions sqrt, log
(base 10, or log(x, base)), ln, exp, abs, round, min, max, pow. Nothing else: no names, no
attributes, no subscripts, no strings, so `__import__('os').system('id')` is rejected
before anything runs. Exponents and sizes are bounded so `9**9**9` fails fast instead of
hanging the process.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_CHARS = 500
MAX_EXPONENT = 10_000
MAX_DIGITS = 4_000

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _log(x: float, base: float = 10.0) -> float:
    return math.log10(x) if base == 10 else math.log(x, base)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "log": _log,
    "ln": math.log,
    "exp": math.exp,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "pow": lambda a, b: _power(a, b),
}

_NORMALISE = str.maketrans(
    {"×": "*", "÷": "/", "（": "(", "）": ")", "，": ",", "^": "**", "−": "-"}
)


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


def _power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} too large (at most {MAX_EXPONENT})")
    whole = isinstance(base, int) and isinstance(exponent, int)
    if whole and exponent > 0 and abs(base) > 1 and exponent * math.log10(abs(base)) > MAX_DIGITS:
        raise CalculatorError("result too large")
    return operator.pow(base, exponent)


def evaluate(expression: str) -> int | float:
    """The value of `expression`.

    Raises:
        CalculatorError: for anything outside the whitelist, or a math error.
    """
    text = expression.strip().translate(_NORMALISE)
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _walk(tree.body)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as exc:
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(f"{type(exc).__name__}: {exc}") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value) if "." not in text and "/" not in text else value
    return value


def _walk(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
    ):
        return FUNCTIONS[node.func.id](*[_walk(arg) for arg in node.args])
    raise CalculatorError(f"not allowed in a calculation: {ast.unparse(node)!r}")
