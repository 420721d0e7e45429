"""Assistant.reply with a scripted model: tool loops, retrieval across turns, citation flags."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from domainlm.chat.formats import get_format
from domainlm.engine.adapters import AdapterPool
from domainlm.engine.assistant import Assistant, Session
from domainlm.engine.generation import Completion, Request
from domainlm.engine.router import Router
from domainlm.errors import DomainLMError
from domainlm.kb.base import build
from domainlm.tools import Toolset
from domainlm.tools.finance import FINANCE_TOOLS
from tests.engine_helpers import make_expert, tiny_base
from tests.test_kb import make_law_db


class Script:
    """Stands in for the model: returns the scripted replies in order, keeps the prompts."""

    def __init__(self, tokenizer: Any, replies: list[str]):
        self.tokenizer, self.replies, self.prompts = tokenizer, list(replies), []

    def __call__(self, requests: list[Request]) -> list[Completion]:
        self.prompts.append(self.tokenizer.decode(requests[0].prompt))
        return [Completion(self.replies.pop(0), 1, "stop")]


@pytest.fixture
def assistant(tmp_path: Path) -> Assistant:
    base = tiny_base()
    kb = build(tmp_path / "kb", [str(make_law_db(tmp_path / "laws.db"))], workers=1)
    return Assistant(
        AdapterPool(base), get_format("hf", base.tokenizer), kb=kb, toolset=Toolset(FINANCE_TOOLS)
    )


#: A chat template without tool syntax, like SmolLM2-135M-Instruct's.
PLAIN_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def plain_assistant() -> Assistant:
    base = tiny_base()
    base.tokenizer.chat_template = PLAIN_CHATML
    return Assistant(
        AdapterPool(base), get_format("hf", base.tokenizer), toolset=Toolset(FINANCE_TOOLS)
    )


def _script(assistant: Assistant, replies: list[str]) -> Script:
    script = Script(assistant.pool.base.tokenizer, replies)
    assistant.engine.run = script  # type: ignore[method-assign]
    return script


CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "10000*(1+0.05)**10"}}</tool_call>'


def test_tool_loop_runs_calls_and_feeds_observations_back(assistant: Assistant) -> None:
    script = _script(
        assistant,
        [
            CALL,
            '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "calculator", "arguments": {"expression": "__import__(\'os\')"}}</tool_call>',
            "本息合计约16288.95元。",
        ],
    )
    reply = assistant.reply(Session(), "本金一万，年利率5%，十年复利多少？", use_kb=False)
    assert reply.text == "本息合计约16288.95元。"
    assert [(o.name, o.ok) for o in reply.tool_trace] == [
        ("calculator", True),
        ("nope", False),
        ("calculator", False),
    ]
    assert reply.tool_trace[0].content == "16288.94626777442"
    # Each observation is in the next prompt, errors included.
    assert "16288.94626777442" in script.prompts[1]
    assert "unknown tool 'nope'" in script.prompts[2]
    assert "not allowed in a calculation" in script.prompts[3]


def test_tool_steps_are_bounded_and_bad_json_is_an_observation(assistant: Assistant) -> None:
    assistant.max_tool_steps = 2
    _script(
        assistant,
        ['<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>', CALL, CALL],
    )
    reply = assistant.reply(Session(), "算一下10000*(1+0.05)**10", use_kb=False)
    assert len(reply.tool_trace) == 2 and not reply.tool_trace[0].ok
    assert "not valid JSON" in reply.tool_trace[0].content


def test_no_example_call_to_copy_and_no_tools_for_questions_without_numbers(
    plain_assistant: Assistant,
) -> None:
    """Where the template has no tool syntax the assistant describes the tools itself:
    with no example call the model could copy (SmolLM2 answered legal questions with the
    example's `calculator(250*(1+0.03)**4)` result), and only when the question holds a
    number a calculation could use."""
    assistant = plain_assistant
    script = _script(assistant, ["定金是一方为担保债务履行而预先给付的金钱。", "约16288.95元。"])
    session = Session()
    legal = assistant.reply(session, "什么是定金？定金最多可以约定多少？", use_kb=False)
    assert legal.text.startswith("定金是") and not legal.tool_trace
    assert "calculator" not in script.prompts[0] and "<tool_call>" not in script.prompts[0]
    assistant.reply(session, "10000*(1+0.05)**10 是多少？", use_kb=False)
    offered = script.prompts[1]
    assert "- calculator(expression: string)" in offered and "<tool_call>" in offered
    assert offered.count("<|im_start|>user") == 2  # no example exchange between the turns
    assert '"name": "calculator"' not in offered and "250" not in offered


def test_a_call_made_of_numbers_not_in_the_conversation_is_not_run(assistant: Assistant) -> None:
    copied = (
        '<tool_call>{"name": "calculator", "arguments": {"expression": "250*(1+0.03)**4"}}'
        "</tool_call>"
    )
    script = _script(assistant, [copied, "定金不得超过主合同标的额的百分之二十，即2万元。"])
    session = Session()
    reply = assistant.reply(session, "合同标的额10万元，定金最多约定多少？", use_kb=False)
    assert reply.text == "定金不得超过主合同标的额的百分之二十，即2万元。"
    [observation] = reply.tool_trace
    assert not observation.ok and observation.content.startswith("not run: ")
    assert "281.377" not in observation.content + script.prompts[1]
    # Asked again without the tools, and the made-up call is not in the history.
    assert "calculator" in script.prompts[0] and "calculator" not in script.prompts[1]
    assert [m.role for m in session.messages] == ["user", "assistant"]


def test_an_empty_question_is_refused(assistant: Assistant, cli: Any) -> None:
    with pytest.raises(DomainLMError, match="empty"):
        assistant.reply(Session(), " \n\u3000")
    for question in ("", "  \t "):
        code, out, err = cli("ask", question, "--model", "tiny")
        assert (code, out, err) == (2, "", "error: the question is empty\n")


def test_articles_are_kept_for_follow_ups_and_citations_checked(assistant: Assistant) -> None:
    script = _script(
        assistant,
        [
            "依据《民法典》第五百八十六条，定金不得超过主合同标的额的百分之二十。另见《民法典》第九千条。",
            "超过部分不产生定金的效力。",
            "借款人应当按期返还借款。",
        ],
    )
    session = Session()
    reply = assistant.reply(session, "什么是定金？")
    assert {a.article_num for a in reply.articles} >= {586}
    assert (
        "与问题无关的请忽略" in script.prompts[0]
        and "定金合同自实际交付定金时成立" in script.prompts[0]
    )
    assert [(c.article, c.verdict) for c in reply.citations] == [
        (586, "current"),
        (9000, "no_such_article"),
    ]
    assert [c.article for c in reply.unverified] == [9000]
    first = {a.id for a in reply.articles}

    follow_up = assistant.reply(session, "定金的数额超过了怎么办？")  # same topic: articles kept
    assert first <= {a.id for a in follow_up.articles}
    changed = assistant.reply(session, "同事借我钱不还怎么办")  # new topic: retrieved afresh
    fresh = assistant.kb.search("同事借我钱不还怎么办", k=3)
    assert [a.id for a in changed.articles] == [a.id for a in fresh]  # not merged with the old
    assert changed.articles[0].article_num == 675
    assert "同事借我钱不还怎么办" in script.prompts[2] and "什么是定金" in script.prompts[2]


def test_router_picks_the_expert_by_its_card(tmp_path: Path) -> None:
    root = tmp_path / "experts"
    make_expert(root, "law", 1, description="中国法律咨询：合同、定金、借款、侵权、婚姻家庭")
    make_expert(root, "fin", 2, description="金融计算：利率、复利、收益率、股票、债券、期权定价")
    pool = AdapterPool(tiny_base(), roots=[root])
    pool.add(root / "law")
    pool.add(root / "fin")
    router = Router(dict(pool.cards))
    assert router.route("定金合同怎么签").expert == "law"
    assert router.route("复利的收益率怎么算").expert == "fin"
    assert router.route("hello").expert == "base"


def test_chat_streams_and_handles_commands(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = iter(
        ["/kb on", "/expert nobody", "hello", "/save " + str(tmp_path / "chat.json"), "/quit"]
    )
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, err = cli("chat", "--model", "tiny", "--max-new-tokens", "4")
    assert code == 0, err
    assert "no knowledge base loaded" in err and "no expert 'nobody'" in err
    assert "saved 2 messages" in out
    import json

    saved = json.loads((tmp_path / "chat.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]


def test_ask_with_tools_prints_the_trace(cli: Any) -> None:
    code, out, err = cli(
        "ask", "2+2?", "--model", "tiny", "--tools", "finance", "--max-new-tokens", "4", "--json"
    )
    assert code == 0, err
    import json

    reply = json.loads(out)
    assert reply["expert"] == "base" and "timings" in reply
    code, _, err = cli("ask", "x", "--model", "tiny", "--tools", "nope")
    assert code == 2 and "unknown toolset" in err


class StopAfter:
    """A stop event that turns set after `checks` looks: stops a reply at a known token."""

    def __init__(self, checks: int):
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        return self.checks < 0


@pytest.mark.parametrize("with_tools", [True, False])
def test_a_stop_event_stops_the_reply_in_any_step(assistant: Assistant, with_tools: bool) -> None:
    """A server's client that goes away sets `stop`: the reply stops within a token, also in
    a tool-loop step that streams nothing, the engine's row is freed, and the session keeps
    no half turn."""
    from domainlm.engine.assistant import Stopped
    from domainlm.engine.generation import Sampling

    session = Session(sampling=Sampling(max_new_tokens=64, temperature=1.0, seed=1))
    shown: list[str] = []
    question = "本金10000元，年利率5%，10年后多少钱？" if with_tools else "你好"
    with pytest.raises(Stopped):
        assistant.reply(
            session, question, use_tools=with_tools, stop=StopAfter(4),  # type: ignore[arg-type]
            on_text=None if with_tools else shown.append,
        )  # fmt: skip
    assert session.usage["completion_tokens"] == 0  # the generation never finished
    engine: Any = assistant.engine
    for _ in range(500):  # the worker drops a cancelled row at its next step
        if engine.load == {"waiting": 0, "prefilling": 0, "running": 0}:
            break
        time.sleep(0.01)
    assert engine.load == {"waiting": 0, "prefilling": 0, "running": 0}
    said = "".join(shown).strip()
    assert [(m.role, m.content) for m in session.messages] == (
        [("user", question), ("assistant", said)] if said else []
    )
