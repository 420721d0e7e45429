"""Chinese numerals as used in statute numbering: 第五百八十六条 <-> 586, 第一百三十三条之一."""

from __future__ import annotations

import re

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
           "七": 7, "八": 8, "九": 9}  # fmt: skip
_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_FULLWIDTH = str.maketrans("０１２３４５６７８９萬兩", "0123456789万两")
#: A statute number in Chinese numerals or digits (五百八十六, 586).
NUMERAL = r"[零〇一二两三四五六七八九十百千万\d]+"
_ARTICLE_REF = re.compile(rf"^第?\s*({NUMERAL})\s*条?\s*(?:(?:之|-)\s*({NUMERAL}))?$")


def parse_number(text: str) -> int | None:
    """586 for "五百八十六", "586" or "５８６"; None if `text` is not a number."""
    text = text.strip().translate(_FULLWIDTH)
    if not text:
        return None
    if text.isdigit():
        return int(text)
    total, section, digit = 0, 0, None
    for char in text:
        if char in _DIGITS:
            digit = _DIGITS[char]
        elif char in _UNITS:
            unit = _UNITS[char]
            if unit == 10000:
                total += (section + (digit or 0)) * unit
                section = 0
            else:
                # "十" alone means 10 (十二 = 12), "一十二" too.
                section += (1 if digit is None else digit) * unit
            digit = None
        else:
            return None
    return total + section + (digit or 0)


def to_chinese(number: int) -> str:
    """The statute spelling of `number` (586 -> 五百八十六, 1047 -> 一千零四十七, 12 -> 十二)."""
    if number <= 0:
        return "零"
    if number >= 100_000_000:
        return str(number)
    if number >= 10_000:
        high, low = divmod(number, 10_000)
        if not low:
            return to_chinese(high) + "万"
        tail = to_chinese(low)
        tail = "一" + tail if tail.startswith("十") else tail
        return to_chinese(high) + "万" + ("零" if low < 1000 else "") + tail
    digits = "零一二三四五六七八九"
    units = [(1000, "千"), (100, "百"), (10, "十")]
    out, rest, need_zero = "", number, False
    for value, name in units:
        digit, rest = divmod(rest, value)
        if digit:
            if need_zero:
                out += "零"
            out += digits[digit] + name
            need_zero = False
        elif out:
            need_zero = True
    if rest:
        out += ("零" if need_zero else "") + digits[rest]
    if out.startswith("一十"):
        out = out[1:]
    return out


def parse_article(text: str) -> tuple[int, int] | None:
    """(133, 1) for "第一百三十三条之一", "133之一", "133之1" or "133-1"; (586, 0) for "586";
    None if `text` names no article."""
    match = _ARTICLE_REF.match(text.strip().translate(_FULLWIDTH).replace("條", "条"))
    if not match:
        return None
    number = parse_number(match.group(1))
    sub = parse_number(match.group(2)) if match.group(2) else 0
    if number is None or sub is None:
        return None
    return number, sub


def article_label(number: int, sub: int = 0) -> str:
    """第一百三十三条之一 for (133, 1)."""
    return f"第{to_chinese(number)}条" + (f"之{to_chinese(sub)}" if sub else "")
