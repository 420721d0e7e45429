"""Tools: schemas from signatures, safe dispatch, the finance tools, inline calls, code."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import pytest

from domainlm.chat.conversation import ToolCall
from domainlm.tools import Toolset, tool
from domainlm.tools.calculator import CalculatorError, evaluate
from domainlm.tools.finance import FINANCE_TOOLS
from domainlm.tools.inline import complete, fill
from domainlm.tools.interpreter import run_python


@tool(timeout=0.5)
def lookup(
    code: Annotated[str, "Stock code"],
    days: Annotated[int, "How many days"] = 5,
    kind: Annotated[Literal["close", "open"], "Which price"] = "close",
) -> dict[str, object]:
    """Price history of a stock.

    Longer text that the model does not need.
    """
    if code == "boom":
        raise RuntimeError("data source down")
    if code == "slow":
        time.sleep(2)
    return {"code": code, "days": days, "kind": kind}


def _call(toolset: Toolset, name: str, **arguments: object) -> tuple[bool, str]:
    observation = toolset.call(ToolCall(name=name, arguments=arguments))
    return observation.ok, observation.content


def test_schema_comes_from_the_signature() -> None:
    assert lookup.description == "Price history of a stock."
    assert lookup.parameters == {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Stock code"},
            "days": {"type": "integer", "description": "How many days", "default": 5},
            "kind": {"enum": ["close", "open"], "description": "Which price", "default": "close"},
        },
        "required": ["code"],
        "additionalProperties": False,
    }


def test_every_failure_is_an_observation_not_an_exception() -> None:
    tools = Toolset([lookup])
    assert _call(tools, "lookup", code="600519") == (
        True,
        '{"code": "600519", "days": 5, "kind": "close"}',
    )
    assert _call(tools, "missing") == (False, "error: unknown tool 'missing' (tools: lookup)")
    ok, text = _call(tools, "lookup", code="x", days="five")
    assert not ok and "days" in text and "integer" in text
    ok, text = _call(tools, "lookup", code="x", extra=1)
    assert not ok and "extra" in text
    assert _call(tools, "lookup", code="boom") == (False, "error: RuntimeError: data source down")
    ok, text = _call(tools, "lookup", code="slow")  # the timeout's own message, not a result
    assert not ok and text == "error: lookup timed out after 0.5 s"


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1+2*3", 7),
        ("(1+0.05)**10*10000", pytest.approx(16288.946267774)),
        ("sqrt(16) + ln(exp(2))", 6),
        ("log(1000)", 3),
        ("log(8, 2)", 3),
        ("7 // 2 + 7 % 3", 4),
        ("max(1, 5, 3) - min(4, 2) + abs(-1) + pow(2, 3)", 12),
        ("round(3.14159, 2)", 3.14),
        ("100×1.5÷3", 50),
        ("2^10", 1024),
    ],
)
def test_calculator(expression: str, value: object) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('id')",
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "a + 1",
        "'x' * 3",
        "[1, 2][0]",
        "lambda: 1",
        "9**9**9",
        "10**100000",
        "1/0",
        "sqrt(-1)",
        "x" * 600,
    ],
)
def test_calculator_refuses(expression: str) -> None:
    with pytest.raises(CalculatorError):
        evaluate(expression)


def test_finance_tools() -> None:
    tools = Toolset(FINANCE_TOOLS)
    assert _call(tools, "solve_equations", equations=["x + y = 10", "x - y = 2"]) == (
        True,
        '[{"x": 6.0, "y": 4.0}]',
    )
    ok, text = _call(tools, "solve_equations", equations=["1.05**n = 2"], unknowns=["n"])
    assert ok and text.startswith('[{"n": 14.2')
    ok, text = _call(tools, "solve_equations", equations=["__import__('os').getcwd() = 1"])
    assert not ok and "not allowed" in text
    ok, text = _call(tools, "normal_distribution", operation="cdf", value=1.96)
    assert ok and float(text) == pytest.approx(0.975, abs=1e-4)
    ok, text = _call(
        tools, "normal_distribution", operation="inv_cdf", value=0.95, mean=100, std=15
    )
    assert ok and float(text) == pytest.approx(124.67, abs=0.01)
    assert not _call(tools, "normal_distribution", operation="inv_cdf", value=1.5)[0]
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert _call(tools, "statistics", values=values, measure="median") == (True, "3.0")
    ok, text = _call(tools, "statistics", values=values, measure="std")
    assert float(text) == pytest.approx(1.78885, abs=1e-4)  # sqrt(12.8 / 4)
    ok, text = _call(tools, "statistics", values=values, measure="percentile", percentile=25)
    assert float(text) == 1.0


def test_inline_calculator_stops_computes_and_continues() -> None:
    pieces = iter(
        ["本息合计[Calculator(10000*(1+0.05)**10)", "元，利息[Calculator(16288.95-10000)", "元。"]
    )
    prompts: list[str] = []

    def generate(text: str, stops: list[str]) -> str:
        prompts.append(text)
        assert stops == ["→"]
        return next(pieces)

    text, calls = complete(generate, "问：")
    assert text == (
        "本息合计[Calculator(10000*(1+0.05)**10)→16288.946268]元，"
        "利息[Calculator(16288.95-10000)→6288.95]元。"
    )
    assert [c.ok for c in calls] == [True, True]
    assert prompts[1].endswith("→16288.946268]")  # the model continues after the result
    repaired, calls = fill("共[Calculator(2+3)→7]个，[Calculator(os.system(1))→0]")
    assert repaired.startswith("共[Calculator(2+3)→5]个") and not calls[1].ok


def test_code_interpreter_limits() -> None:
    assert run_python("print(sum(range(10)))") == "45"
    assert "network access is disabled" in run_python(
        "import socket\nsocket.create_connection(('127.0.0.1', 9))"
    )
    assert "MemoryError" in run_python("x = bytearray(4 * 1024**3)")
    assert "No such file" in run_python("open('secret.txt').read()")


def test_numbers_are_read_as_people_write_them() -> None:
    from domainlm.tools.grounding import numbers_in

    assert numbers_in("本金一万，年利率5%，十年复利多少？") == {10000, 5, 0.05, 10}
    assert numbers_in("１０,０００元、1.5万、百分之二十、3‰") >= {10000, 15000, 0.2, 0.003}
    assert numbers_in("什么是定金？千万别忘了") == set()


def test_a_call_is_grounded_when_one_of_its_numbers_was_in_the_conversation() -> None:
    from domainlm.tools.grounding import grounded, numbers_in

    known = numbers_in("本金一万，年利率5%，十年复利多少？")
    assert grounded({"expression": "10000*(1+0.05)**10"}, known)
    assert grounded({"values": [3, 10000]}, known)
    # The example call small models copied into legal answers: nothing of it was asked.
    assert not grounded({"expression": "250*(1+0.03)**4"}, known)
    assert not grounded({"expression": "250*(1+0.03)**4"}, numbers_in("第1条是什么？"))
    assert grounded({"expression": "sqrt(x)"}, set())  # no numbers, nothing made up
