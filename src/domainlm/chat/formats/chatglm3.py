"""ChatGLM3's native chat format, token for token.

Each turn is `<|role|>` (a special token) + encode(f"{metadata}\\n") + encode(content), after
the `[gMASK]sop` prefix, as ChatGLM3's tokenizer builds it. Tools are listed in the system
turn as JSON (indent 4), a tool described in prose (ChatGLM3's ToolAlpaca data) as the JSON
string it is, as ChatGLM3's tokenizer lists them. A call is an assistant turn whose metadata
is the tool name and whose content is a fenced python block holding `tool_call(k=v, ...)`;
the result is an `<|observation|>` turn. The code interpreter is the tool named
`interpreter`, whose content is the code itself.

Loss: assistant turns (text and tool calls, metadata line included) are trained, plus the
token that ends them (the next role token or eos), which teaches the model when to stop or
hand over to a tool. ChatGLM3's finetune demo gets the same effect by shifting its mask one
place; unlike it, tool turns train here instead of raising NotImplementedError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from domainlm.chat.conversation import Conversation, Message, ToolCall
from domainlm.chat.formats.base import (
    ChatFormat,
    Rendered,
    TokenBuilder,
    require_special,
    special_token_id,
)
from domainlm.chat.toolcall import TOOL_NAME, format_python_call, parse_python_call
from domainlm.errors import DomainLMError, ToolCallParseError

TOOL_PROMPT = (
    "Answer the following questions as best as you can. You have access to the following tools:"
)
INTERPRETER = "interpreter"
_HEADER_TOKENS = {
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "tool": "<|observation|>",
}
_FENCE = re.compile(r"^\s*```[\w-]*\n(?P<code>.*?)\n?```\s*$", re.DOTALL)


@dataclass(frozen=True)
class Turn:
    """One `<|role|>metadata\\ncontent` block."""

    role: str
    metadata: str
    content: str
    trained: bool


def call_content(call: ToolCall) -> str:
    """The content of a tool-call turn: a fenced python block."""
    if call.name == INTERPRETER and set(call.arguments) == {"code"}:
        code = str(call.arguments["code"])
    else:
        code = format_python_call(call.arguments)
    return f"```python\n{code}\n```"


def system_text(conversation: Conversation) -> str | None:
    """The system turn's text, with the tool list appended as ChatGLM3's `build_chat_input`
    does (`content + "\\n" + json.dumps(tools, indent=4, ensure_ascii=False)`); a tool
    described in prose is listed as the JSON string it is."""
    first = conversation.messages[0] if conversation.messages else None
    base = first.content if first is not None and first.role == "system" else None
    if not conversation.tools:
        return base
    listing = json.dumps(
        [spec.text if spec.text is not None else spec.function() for spec in conversation.tools],
        indent=4,
        ensure_ascii=False,
    )
    return f"{base if base is not None else TOOL_PROMPT}\n{listing}"


def turns(conversation: Conversation) -> list[Turn]:
    """The conversation as ChatGLM3 turns, in order."""
    result: list[Turn] = []
    system = system_text(conversation)
    messages = conversation.messages
    if system is not None:
        has_system = bool(messages) and messages[0].role == "system"
        trained = messages[0].trained if has_system else False
        result.append(Turn("system", "", system, trained))
        if has_system:
            messages = messages[1:]
    for message in messages:
        if message.role == "assistant":
            if message.content or not message.tool_calls:
                result.append(Turn("assistant", "", message.content, message.trained))
            for call in message.tool_calls:
                result.append(Turn("assistant", call.name, call_content(call), message.trained))
        else:
            result.append(Turn(message.role, "", message.content, message.trained))
    return result


class ChatGLM3Format(ChatFormat):
    """ChatGLM3-6B's format (`[gMASK]sop<|system|>...`)."""

    name = "chatglm3"

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer)
        self.header_ids = {
            role: require_special(tokenizer, token, self.name)
            for role, token in _HEADER_TOKENS.items()
        }
        gmask = require_special(tokenizer, "[gMASK]", self.name)
        sop = special_token_id(tokenizer, "sop")
        if sop is None:
            sop = require_special(tokenizer, "<sop>", self.name)
        self.prefix_ids = [gmask, sop]
        if tokenizer.eos_token_id is None:
            raise DomainLMError("the tokenizer has no eos token: the chatglm3 format needs one")
        self.eos_id = int(tokenizer.eos_token_id)

    def _add_turns(self, builder: TokenBuilder, items: list[Turn]) -> bool:
        builder.add_ids(self.prefix_ids, trained=False)
        previous_trained = False
        for turn in items:
            # The header token is what the previous turn predicts as its end.
            builder.add_ids([self.header_ids[turn.role]], trained=previous_trained)
            builder.add_text(f"{turn.metadata}\n", turn.trained)
            builder.add_text(turn.content, turn.trained)
            previous_trained = turn.trained
        return previous_trained

    def render(self, conversation: Conversation) -> Rendered:
        builder = TokenBuilder(self.tokenizer)
        last_trained = self._add_turns(builder, turns(conversation))
        builder.add_ids([self.eos_id], trained=last_trained)
        return builder.build()

    def render_prompt(self, conversation: Conversation) -> list[int]:
        builder = TokenBuilder(self.tokenizer)
        self._add_turns(builder, turns(conversation))
        builder.add_ids([self.header_ids["assistant"]], trained=False)
        return builder.input_ids

    @property
    def stop_strings(self) -> list[str]:
        return ["<|user|>", "<|observation|>", str(self.tokenizer.eos_token)]

    def parse(self, text: str, tools: list[str] | None = None) -> Message:
        text = self.cut_at_stop(text)
        contents: list[str] = []
        calls: list[ToolCall] = []
        for part in text.split(_HEADER_TOKENS["assistant"]):
            metadata, newline, body = part.partition("\n")
            name = metadata.strip()
            if not newline:
                name, body = "", part
            if name and self._is_call(name, body, tools):
                calls.append(read_call(name, body))
            elif chunk := (part if name else body).strip():
                contents.append(chunk)
        return Message(role="assistant", content="\n\n".join(contents), tool_calls=calls)

    @staticmethod
    def _is_call(name: str, body: str, tools: list[str] | None) -> bool:
        if tools is not None and name in tools:
            return True
        return bool(TOOL_NAME.fullmatch(name)) and _FENCE.match(body) is not None


def read_call(name: str, body: str) -> ToolCall:
    """The call in a ChatGLM3 tool turn: `name` is its metadata, `body` the fenced code."""
    match = _FENCE.match(body)
    code = match.group("code") if match else body.strip()
    if name == INTERPRETER:
        return ToolCall(name=name, arguments={"code": code})
    try:
        return ToolCall(name=name, arguments=parse_python_call(code))
    except ToolCallParseError as exc:
        raise ToolCallParseError(f"call of {name}: {exc}") from None
