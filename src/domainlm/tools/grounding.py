"""Whether a tool call computes on the conversation's numbers or on numbers from nowhere.

A calculation the user needs starts from numbers the user gave (or a tool returned): a
call whose numbers all appear nowhere in the conversation was copied from somewhere else
(a small model repeating an example call on a legal question) and answers nothing that
was asked. `grounded` tells the two apart; 0 and 1 (1+r, x*1.0) prove nothing either way.

Numbers are read as people write them in Chinese and English text: 10000, 10,000, 1.5万,
5% (also 0.05), 百分之五, 一万, 十年.
"""

from __future__ import annotations

import math
import re
from typing import Any

from domainlm.kb.numerals import parse_number

#: Numbers every formula holds, which therefore say nothing about where a call came from.
TRIVIAL = frozenset({0.0, 1.0})
_FULLWIDTH = str.maketrans("０１２３４５６７８９．，％", "0123456789.,%")
_DIGITS = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")
_WRITTEN = re.compile(
    r"(?P<number>\d+(?:,\d{3})*(?:\.\d+)?)\s*(?P<unit>%|‰|万|亿)?"
    r"|(?P<percent>百分之)?(?P<chinese>[零〇一二两三四五六七八九十百千万]+)"
)
_SCALE = {"万": 1e4, "亿": 1e8}


def numbers_in(text: str) -> set[float]:
    """The numbers written in `text`, with percentages also as fractions (5% -> 5, 0.05)."""
    found: set[float] = set()
    for match in _WRITTEN.finditer(text.translate(_FULLWIDTH)):
        if match["number"] is not None:
            value = float(match["number"].replace(",", ""))
            found.add(value)
            unit = match["unit"]
            if unit in _SCALE:
                found.add(value * _SCALE[unit])
            elif unit == "%":
                found.add(value / 100)
            elif unit == "‰":
                found.add(value / 1000)
            continue
        if not match["chinese"].strip("百千万"):
            continue  # 千万 (by all means), 百: words more often than numbers
        value_or_none = parse_number(match["chinese"])
        if value_or_none is None:
            continue
        found.add(float(value_or_none))
        if match["percent"]:
            found.add(value_or_none / 100)
    return found


def call_numbers(arguments: Any) -> set[float]:
    """The numbers in a call's arguments (numeric values, and digits inside strings such
    as a calculator expression), less the trivial ones."""
    found: set[float] = set()
    if isinstance(arguments, bool):
        pass
    elif isinstance(arguments, int | float):
        found.add(float(arguments))
    elif isinstance(arguments, str):
        found.update(float(n.replace(",", "")) for n in _DIGITS.findall(arguments))
    elif isinstance(arguments, dict):
        for value in arguments.values():
            found |= call_numbers(value)
    elif isinstance(arguments, list | tuple):
        for value in arguments:
            found |= call_numbers(value)
    return {n for n in found if n not in TRIVIAL}


def grounded(arguments: Any, known: set[float]) -> bool:
    """True unless the call has numbers and none of them is among `known`."""
    numbers = call_numbers(arguments)
    if not numbers:
        return True  # nothing to check (and nothing made up)
    return any(math.isclose(n, k, rel_tol=1e-9, abs_tol=1e-12) for n in numbers for k in known)
