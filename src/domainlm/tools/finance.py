"""DISC-FinLLM's computing tools: calculator, equation solver, normal distribution,
counter/statistics. Each is a `@tool`; `FINANCE_TOOLS` is the toolset `--tools finance` loads.
"""

from __future__ import annotations

import ast
import math
import statistics as stats
from statistics import NormalDist
from typing import Annotated, Any, Literal

from domainlm.tools.calculator import FUNCTIONS, MAX_CHARS, CalculatorError, evaluate
from domainlm.tools.registry import Tool, tool


@tool(grounded=True)
def calculator(
    expression: Annotated[str, "Arithmetic on the question's numbers, e.g. P*(1+r)**n or sqrt(x)"],
) -> Any:
    """Evaluate an arithmetic expression: + - * / ** % //, parentheses, sqrt, log, ln, exp,
    abs, round, min, max, pow."""
    return evaluate(expression)


def _sympy(node: ast.AST, symbols: dict[str, Any]) -> Any:
    """A sympy expression from a whitelisted AST (no eval, unlike sympy's own parser)."""
    import sympy

    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return (
            sympy.nsimplify(node.value)
            if isinstance(node.value, float)
            else sympy.Integer(node.value)
        )
    if isinstance(node, ast.Name) and node.id.isidentifier() and not node.id.startswith("_"):
        return symbols.setdefault(node.id, sympy.Symbol(node.id))
    if isinstance(node, ast.BinOp):
        left, right = _sympy(node.left, symbols), _sympy(node.right, symbols)
        ops = {ast.Add: lambda: left + right, ast.Sub: lambda: left - right,
               ast.Mult: lambda: left * right, ast.Div: lambda: left / right,
               ast.Pow: lambda: left**right}  # fmt: skip
        if type(node.op) in ops:
            return ops[type(node.op)]()
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _sympy(node.operand, symbols)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        functions = {"sqrt": sympy.sqrt, "ln": sympy.log, "exp": sympy.exp, "abs": sympy.Abs,
                     "log": lambda x, b=10: sympy.log(x, b)}  # fmt: skip
        if node.func.id in functions:
            return functions[node.func.id](*[_sympy(a, symbols) for a in node.args])
    raise CalculatorError(f"not allowed in an equation: {ast.unparse(node)!r}")


@tool(grounded=True)
def solve_equations(
    equations: Annotated[list[str], "Equations such as 'x + y = 10', 'x - y = 2'"],
    unknowns: Annotated[list[str] | None, "Variables to solve for (default: all)"] = None,
) -> Any:
    """Solve one equation or a system of equations (linear or not) for the unknowns."""
    import sympy

    if not equations or len(equations) > 20:
        raise CalculatorError("give 1 to 20 equations")
    symbols: dict[str, Any] = {}
    system = []
    for text in equations:
        text = text.replace("^", "**").replace("×", "*").replace("÷", "/")
        if len(text) > MAX_CHARS or text.count("=") != 1:
            raise CalculatorError(f"{text!r}: one '=' per equation, at most {MAX_CHARS} characters")
        left, right = text.split("=")
        try:
            sides = [ast.parse(side.strip(), mode="eval").body for side in (left, right)]
        except SyntaxError:
            raise CalculatorError(f"cannot read the equation {text!r}") from None
        system.append(sympy.Eq(_sympy(sides[0], symbols), _sympy(sides[1], symbols)))
    wanted = [symbols[u] for u in (unknowns or sorted(symbols)) if u in symbols]
    if not wanted:
        raise CalculatorError("no unknowns in the equations")
    solutions = sympy.solve(system, wanted, dict=True)
    return [
        {str(k): (float(v) if v.is_number and v.is_real else str(v)) for k, v in s.items()}
        for s in solutions
    ]


@tool(grounded=True)
def normal_distribution(
    operation: Annotated[
        Literal["cdf", "inv_cdf", "pdf"], "cdf: P(X<=x); inv_cdf: x for a probability; pdf: density"
    ],
    value: Annotated[float, "x for cdf/pdf, a probability in (0, 1) for inv_cdf"],
    mean: Annotated[float, "Mean of the distribution"] = 0.0,
    std: Annotated[float, "Standard deviation (> 0)"] = 1.0,
) -> float:
    """Normal distribution table: cumulative probability, its inverse (quantile), or density."""
    dist = NormalDist(mean, std)
    if operation == "cdf":
        return dist.cdf(value)
    if operation == "pdf":
        return dist.pdf(value)
    if not 0 < value < 1:
        raise CalculatorError("inv_cdf needs a probability strictly between 0 and 1")
    return dist.inv_cdf(value)


@tool(grounded=True)
def statistics(
    values: Annotated[list[float], "The numbers"],
    measure: Annotated[
        Literal[
            "count",
            "sum",
            "mean",
            "median",
            "variance",
            "pvariance",
            "std",
            "pstd",
            "percentile",
            "min",
            "max",
        ],
        "What to compute (variance/std: sample; pvariance/pstd: population)",
    ],
    percentile: Annotated[float | None, "For measure=percentile: 0-100"] = None,
) -> float:
    """Count and describe a list of numbers: count, sum, mean, median, variance, standard
    deviation (sample or population), percentile, min, max."""
    if not values:
        raise CalculatorError("no values")
    if measure == "percentile":
        if percentile is None or not 0 <= percentile <= 100:
            raise CalculatorError("percentile needs a value between 0 and 100")
        ordered = sorted(values)
        position = (len(ordered) - 1) * percentile / 100
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    table: dict[str, Any] = {
        "count": len, "sum": math.fsum, "mean": stats.fmean, "median": stats.median,
        "variance": stats.variance, "pvariance": stats.pvariance, "std": stats.stdev,
        "pstd": stats.pstdev, "min": min, "max": max,
    }  # fmt: skip
    return float(table[measure](values))


FINANCE_TOOLS: list[Tool] = [calculator, solve_equations, normal_distribution, statistics]
__all__ = ["FINANCE_TOOLS", "FUNCTIONS"]
