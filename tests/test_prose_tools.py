"""Tools described in prose, as ChatGLM3's ToolAlpaca converter writes them.

ChatGLM3's `finetune_chatmodel_demo/scripts/format_tool_alpaca.py` turns ToolAlpaca into
`{"tools": [<NLDocumentation string>], "conversations": [...]}`; ChatGLM3's tokenizer
(`build_chat_input`) lists the tools in the system turn as
`json.dumps(tools, indent=4, ensure_ascii=False)`, strings included.
`data/toolalpaca_chatglm3.jsonl` holds records in that layout (our own APIs, not ToolAlpaca's).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from domainlm.chat import Conversation
from domainlm.chat.formats import get_format
from domainlm.data.readers import from_chatglm3, link_tool_results
from domainlm.data.validate import check_conversation
from domainlm.errors import DomainLMError

FIXTURE = Path(__file__).parent / "data" / "toolalpaca_chatglm3.jsonl"
RECORDS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
TOOL_PROMPT = (
    "Answer the following questions as best as you can. You have access to the following tools:"
)


def read(record: dict[str, Any]) -> Conversation:
    return link_tool_results(from_chatglm3(copy.deepcopy(record)))


def build_chat_input(tokenizer: Any, history: list[dict[str, Any]], query: str) -> list[int]:
    """ChatGLM3's `tokenization_chatglm.py` `build_chat_input`, with our tokenizer."""

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def message(role: str, metadata: str, content: str) -> list[int]:
        return (
            [tokenizer.convert_tokens_to_ids(f"<|{role}|>")] + enc(f"{metadata}\n") + enc(content)
        )

    ids = [tokenizer.convert_tokens_to_ids("[gMASK]"), tokenizer.convert_tokens_to_ids("sop")]
    for item in history:
        content = item["content"]
        if item["role"] == "system" and "tools" in item:
            content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
        ids += message(item["role"], item.get("metadata", ""), content)
    ids += message("user", "", query)
    return [*ids, tokenizer.convert_tokens_to_ids("<|assistant|>")]


@pytest.mark.parametrize("index", range(len(RECORDS)))
def test_prompt_lists_prose_tools_as_chatglm3s_tokenizer_does(tokenizer: Any, index: int) -> None:
    record = RECORDS[index]
    first_user = Conversation(messages=read(record).messages[:1], tools=read(record).tools)
    expected = build_chat_input(
        tokenizer,
        [{"role": "system", "content": TOOL_PROMPT, "tools": record["tools"]}],
        record["conversations"][0]["content"],
    )
    assert get_format("chatglm3", tokenizer).render_prompt(first_user) == expected


def test_whole_conversation_renders_turn_by_turn(tokenizer: Any) -> None:
    fmt = get_format("chatglm3", tokenizer)
    record = RECORDS[2]  # two calls, Chinese arguments
    text = fmt.decode(fmt.render(read(record)).input_ids)
    listing = json.dumps(record["tools"], indent=4, ensure_ascii=False)
    assert text.startswith(f"[gMASK]sop<|system|>\n{TOOL_PROMPT}\n{listing}<|user|>\n")
    assert '<|assistant|>getArticle\n```python\ntool_call(law="民法典", article=587)\n```' in text
    assert text.count("<|observation|>\nStatus Code: 200.") == 2


def test_calls_are_checked_by_name_against_the_prose() -> None:
    for record in RECORDS:
        assert check_conversation(read(record)) == []
    typo = copy.deepcopy(RECORDS[0])
    typo["conversations"][2]["name"] = "convertAmounts"
    [problem] = check_conversation(read(typo))
    assert str(problem) == (
        "messages[1].tool_calls[0].function.name: calls tool 'convertAmounts', not declared "
        "(declared: none; 1 described in prose, none naming it)"
    )
    # No schema: arguments are not checked against the prose.
    loose = copy.deepcopy(RECORDS[0])
    loose["conversations"][2]["parameters"] = {"anything": [1, 2]}
    assert check_conversation(read(loose)) == []


def test_prose_tools_survive_the_stored_jsonl(tokenizer: Any) -> None:
    conversation = read(RECORDS[1])
    stored = json.loads(json.dumps(conversation.to_record(), ensure_ascii=False))
    assert stored["tools"] == RECORDS[1]["tools"]
    again = Conversation.from_record(stored)
    fmt = get_format("chatglm3", tokenizer)
    assert fmt.render(again) == fmt.render(conversation)


def test_hf_format_refuses_prose_tools_naming_the_record(tokenizer: Any) -> None:
    conversation = read(RECORDS[0])
    conversation.meta["source"] = "tools.jsonl:1"
    with pytest.raises(DomainLMError) as caught:
        get_format("hf", tokenizer).render(conversation)
    message = str(caught.value)
    assert message.startswith("tools.jsonl:1: tools[0]: a tool described only in prose")
    assert "chatglm3" in message and "\n" not in message


def test_data_commands_take_toolalpaca_data(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "tools.jsonl"
    code, stdout, stderr = cli("data", "convert", FIXTURE, "-o", out)
    assert code == 0, stderr
    assert f"read {len(RECORDS)}, valid {len(RECORDS)}, rejected 0" in stdout
    code, stdout, stderr = cli(
        "data", "validate", out, "--tokenizer", "tiny", "--chat-format", "chatglm3"
    )
    assert code == 0 and "all records valid" in stdout, stderr
    code, _, stderr = cli("data", "validate", out, "--tokenizer", "tiny", "--chat-format", "hf")
    # Each record is named by where it came from (meta.source), as every rejection is.
    lines = stderr.splitlines()
    assert code == 2
    assert lines[0].startswith(f"{FIXTURE}:1: tools[0]: a tool described only in prose")
    assert f"error: {len(RECORDS)} of {len(RECORDS)} records are invalid" in stderr
