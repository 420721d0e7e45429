"""Tool-use traces (DISC-FinLLM's computing instructions), checked by running them.

The teacher writes a problem and its solution as tool calls with the result it expects
from each; DomainLM runs every call with its own tools (arguments validated against the
tool's schema) and keeps the row only when each stated result is the tool's result, the
final answer states the last one, and every call computes on numbers of the problem or of
earlier results. The row is in OpenAI tool-call form: the question, an assistant turn per
call, the tool's own output, the answer (chat formats render it for training, ChatGLM3's
`<|observation|>` turns included).
"""

from __future__ import annotations

import math
import re
from typing import Any

from domainlm.chat.conversation import ToolCall
from domainlm.engine.setup import make_toolset
from domainlm.eval.compute import Stated, close, final_number
from domainlm.synth.generators import Context, Item, _provenance, _sample, _system, row
from domainlm.synth.prompts import CORRECTIONS, PROMPTS
from domainlm.synth.recipe import ToolUse
from domainlm.synth.teacher import Usage, extract_json
from domainlm.tools.grounding import grounded, numbers_in


def _plan_of(text: str) -> dict[str, Any]:
    """The teacher's problem and solution, or ValueError saying what is missing."""
    value = extract_json(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    question, steps, answer = value.get("question"), value.get("steps"), value.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("no question")
    if not isinstance(steps, list) or not steps:
        raise ValueError("no steps")
    for i, step in enumerate(steps, 1):
        if not isinstance(step, dict) or not isinstance(step.get("tool"), str):
            raise ValueError(f"step {i}: no tool")
        if not isinstance(step.get("arguments"), dict):
            raise ValueError(f"step {i}: arguments are not an object")
        if "result" not in step:
            raise ValueError(f"step {i}: no result")
    if not isinstance(answer, str | int | float) or not str(answer).strip():
        raise ValueError("no answer")
    return {"question": question.strip(), "steps": steps, "answer": str(answer).strip()}


def numbers_of(value: Any) -> list[float]:
    """The numbers in a tool result or a stated one, in order: a number, a numeric string,
    or those inside lists and objects (solve_equations answers [{"x": 5.0}])."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)] if math.isfinite(value) else []
    if isinstance(value, str):
        stated = final_number(value)
        return [stated.value / 100 if stated.percent else stated.value] if stated else []
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_of(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in numbers_of(v)]
    return []


def same_number(stated: float, actual: float, tolerance: float) -> bool:
    """Equal within `tolerance`, or `actual` rounded to the decimals `stated` shows."""
    if math.isclose(stated, actual, rel_tol=tolerance, abs_tol=1e-9):
        return True
    digits = len(repr(stated).partition(".")[2].rstrip("0")) if "e" not in repr(stated) else 12
    return round(actual, digits) == stated


def check_trace(plan: dict[str, Any], results: list[Any], tolerance: float) -> str | None:
    """Why the trace does not hold (None when it does): `results` are the tools' outputs."""
    for i, (step, actual) in enumerate(zip(plan["steps"], results, strict=True), 1):
        stated, real = numbers_of(step["result"]), numbers_of(actual)
        if not real:
            return f"step {i}: the tool's result has no number to compare"
        if len(stated) != len(real) or not all(
            same_number(s, r, tolerance) for s, r in zip(stated, real, strict=True)
        ):
            return f"step {i} ({step['tool']}): stated {step['result']!r}, the tool gave {actual!r}"
    answered = final_number(plan["answer"])
    last = numbers_of(results[-1])
    if answered is None:
        return "the answer states no number"
    if not any(
        close(answered, Stated(value), tolerance) or same_number(answered.value, value, tolerance)
        or (answered.percent and same_number(answered.value, value * 100, tolerance))
        for value in last
    ):  # fmt: skip
        return f"the answer states {plan['answer']!r}, the last result is {results[-1]!r}"
    return None


class ToolGenerator:
    needs_teacher = True

    def __init__(self, spec: ToolUse):
        self.spec = spec
        self.toolset = make_toolset([spec.toolset])

    def plan(self, ctx: Context) -> list[Item]:
        label = self.spec.label()
        every = [(t, n) for t in self.spec.topics for n in range(self.spec.per_topic)]
        chosen = _sample(every, self.spec.limit, ctx.rng(label))
        return [Item(f"{label}:{t}:{n}", label, {"topic": t, "n": n}) for t, n in chosen]

    def make(self, item: Item, ctx: Context, usage: Usage) -> list[dict[str, Any]]:
        assert ctx.teacher is not None
        specs = self.toolset.specs
        tools = "\n".join(
            f"- {s.name}: {s.description} 参数: {_parameters(s.parameters)}" for s in specs
        )
        prompt = PROMPTS["tool_problem.v1"].format(topic=item.payload["topic"], tools=tools)
        plan = ctx.teacher.ask(
            [{"role": "user", "content": prompt}], _plan_of, usage, CORRECTIONS["json"]
        )
        messages: list[dict[str, Any]] = [{"role": "user", "content": plan["question"]}]
        known = numbers_in(plan["question"])
        results: list[Any] = []
        flag = None
        for i, step in enumerate(plan["steps"]):
            call = ToolCall(name=step["tool"], arguments=step["arguments"], id=f"call_{i}")
            if not grounded(call.arguments, known):
                flag = f"step {i + 1}: computes on numbers that are not in the problem"
            observation = self.toolset.call(call)
            if not observation.ok:
                flag = flag or f"step {i + 1}: {observation.content}"
                break
            results.append(observation.raw)
            known |= set(numbers_of(observation.raw))
            messages += [
                {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
                {"role": "tool", "tool_call_id": call.id, "name": call.name,
                 "content": observation.content},
            ]  # fmt: skip
        if flag is None:
            flag = check_trace(plan, results, self.spec.tolerance)
        messages.append({"role": "assistant", "content": plan["answer"]})
        meta = _provenance(ctx, self.spec, item, "tool_problem.v1", topic=item.payload["topic"],
                           stated=[s["result"] for s in plan["steps"]],
                           computed=[_plain(r) for r in results])  # fmt: skip
        return [row(_system(self.spec, messages), meta, tools=[s.to_openai() for s in specs],
                    flags={"tool_results": flag} if flag else {})]  # fmt: skip


def _parameters(schema: dict[str, Any]) -> str:
    parts = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or "/".join(p.get("type", "?") for p in prop.get("anyOf", []))
        parts.append(
            f"{name} ({kind}{', ' + prop['description'] if 'description' in prop else ''})"
        )
    return "; ".join(parts) or "无"


def _plain(value: Any) -> Any:
    """A tool result as JSON can hold it (sympy numbers are already floats or strings)."""
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return re.sub(r"\s+", " ", str(value))
