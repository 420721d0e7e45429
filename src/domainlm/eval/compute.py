"""Computation problems: the answer's number against the reference, within a tolerance.

The reference is the item's `answer` as a number, or the last number of a worked answer
(FinEval's `goodanswer` ends "所以，该项贷款的年利率为15.13%。"), or the value of the
item's `formula` (an arithmetic expression, computed by DomainLM's calculator: no eval).
The stated answer is the number after the reply's last "答案/结果/为/=/≈/answer is", else
its last number. Percentages compare either way (15.13% = 0.1513); 万/亿 scale.

When the item gives a formula, `formula` scores whether the reply writes a calculation
that comes to the formula's value (an arithmetic expression in the reply, computed by the
calculator) apart from the stated result (`correct`): DISC-Fin-Eval's "formula right,
result right" scored separately, checked by computing instead of by a judge.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from domainlm.tools import calculator

_FULLWIDTH = str.maketrans("０１２３４５６７８９．，％－＝", "0123456789.,%-=")
_NUMBER = re.compile(r"(?<![\dA-Za-z.])(-?\d+(?:,\d{3})*(?:\.\d+)?)\s*(%|％|‰|万|亿)?")
_CUE = re.compile(r"(?:答案|结果|答|约为|约|为|是|等于|=|≈|answer is|result is)\s*[:：]?\s*", re.I)
_EXPRESSION = re.compile(
    r"[\d.()（）][\d.\s+\-*/×÷^()（）]*[+\-*/×÷^][\d.\s+\-*/×÷^()（）]*[\d)）]"
)
_SCALE = {"万": 1e4, "亿": 1e8, "‰": 1e-3}


@dataclass(frozen=True)
class Stated:
    value: float
    percent: bool = False


def _read(match: re.Match[str]) -> Stated:
    value = float(match.group(1).replace(",", ""))
    unit = match.group(2)
    if unit in ("%", "％"):
        return Stated(value, True)
    return Stated(value * _SCALE.get(unit or "", 1.0))


def final_number(text: str) -> Stated | None:
    """The number a reply gives as its answer."""
    text = text.translate(_FULLWIDTH)
    cues = list(_CUE.finditer(text))
    for cue in reversed(cues):
        found = _NUMBER.match(text, cue.end())
        if found:
            return _read(found)
    numbers = list(_NUMBER.finditer(text))
    return _read(numbers[-1]) if numbers else None


def reference_number(answer: object) -> Stated | None:
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int | float):
        return Stated(float(answer))
    return final_number(str(answer))


def close(a: Stated, b: Stated, tolerance: float) -> bool:
    """Equal within a relative `tolerance`; a percentage also matches its fraction."""
    candidates = [(a.value, b.value)]
    if a.percent != b.percent:
        x, y = (a.value / 100, b.value) if a.percent else (a.value, b.value / 100)
        candidates.append((x, y))
    return any(math.isclose(x, y, rel_tol=tolerance, abs_tol=1e-9) for x, y in candidates)


def formula_value(formula: str) -> float:
    """The value of a reference formula (ValueError when it is not arithmetic); the
    calculator reads ×, ÷, ^ and full-width brackets itself."""
    return float(calculator.evaluate(formula.translate(_FULLWIDTH)))


def writes_formula(text: str, value: float, tolerance: float) -> bool:
    """Whether an arithmetic expression written in `text` comes to `value`."""
    text = text.translate(_FULLWIDTH)
    for match in _EXPRESSION.finditer(text):
        try:
            result = float(calculator.evaluate(match.group(0)))
        except (ValueError, ArithmeticError):  # CalculatorError is a ValueError
            continue
        if close(Stated(result), Stated(value), tolerance):
            return True
    return False
