"""The tokenizer's own chat template (Qwen2.5, Llama-3, GLM-4, Gemma, ...), with tools.

Three problems a template does not solve, solved here for any template:
- Which tokens to train. Few templates carry `{% generation %}` tags, so each trained
  message's span is found by rendering prefixes: the text an assistant turn adds after the
  generation prompt of the conversation before it (header excluded, end-of-turn included).
- Injection. Data text is replaced by sentinels before rendering, so the template's own
  markup is the only place special tokens can come from; the text is then encoded with
  special-token parsing off. Tool-call arguments cannot be protected that way and are
  refused if they contain special-token text.
- Parsing replies: `<tool_call>{json}</tool_call>` (Qwen/Hermes), GLM-4's `name\\n{json}`
  turns, and a bare `{"name": ..., "arguments": ...}` object naming a known tool.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from domainlm.chat.conversation import Conversation, Message, ToolCall
from domainlm.chat.formats.base import (
    IGNORE_INDEX,
    ChatFormat,
    Rendered,
    RenderError,
    special_strings,
)
from domainlm.chat.toolcall import TOOL_NAME, parse_json_call
from domainlm.errors import DomainLMError, ToolCallParseError

_SENTINEL = re.compile("\ue000(\\d+)\ue001")
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
# End-of-turn markers of common templates; only those the tokenizer knows are used.
_END_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|user|>",
    "<|observation|>",
    "<|endoftext|>",
)


PROSE_TOOL = (
    "a tool described only in prose (ChatGLM3's ToolAlpaca data) has no JSON schema, which chat "
    "templates need: only the chatglm3 chat format renders it"
)


class HFTemplateFormat(ChatFormat):
    """Renders with `tokenizer.apply_chat_template`, masks by prefix rendering."""

    name = "hf"

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise DomainLMError(
                "the tokenizer has no chat template: use --chat-format chatglm3 for ChatGLM3 "
                "models, or a tokenizer folder whose tokenizer_config.json has a chat_template"
            )
        self._specials = special_strings(tokenizer)

    # -- rendering ---------------------------------------------------------------------------

    def render(self, conversation: Conversation) -> Rendered:
        messages, tools, full, regions = self._render_text(
            conversation, add_generation_prompt=False
        )
        spans = self._trained_spans(conversation, messages, tools, full)
        return self._encode(full, regions, spans)

    def render_prompt(self, conversation: Conversation) -> list[int]:
        _, _, full, regions = self._render_text(conversation, add_generation_prompt=True)
        return self._encode(full, regions, []).input_ids

    def _render_text(
        self, conversation: Conversation, add_generation_prompt: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, list[tuple[int, int]]]:
        """Template messages, tools, the template's text, and where message text sits in it."""
        self._refuse_unrenderable(conversation)
        messages = self._template_messages(conversation, None)
        tools = [spec.to_openai() for spec in conversation.tools]
        full = self._apply(messages, tools, add_generation_prompt)
        regions = self._text_regions(conversation, tools, full, add_generation_prompt)
        return messages, tools, full, regions

    def _template_messages(
        self, conversation: Conversation, texts: list[str] | None
    ) -> list[dict[str, Any]]:
        """Messages as templates expect them; with `texts`, data text becomes sentinels."""

        def protect(text: str) -> str:
            if texts is None or not text:
                return text
            texts.append(text)
            return f"\ue000{len(texts) - 1}\ue001"

        result = []
        for message in conversation.messages:
            item: dict[str, Any] = {"role": message.role, "content": protect(message.content)}
            if message.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in message.tool_calls
                ]
            if message.role == "tool":
                item["tool_call_id"] = message.tool_call_id
                item["name"] = message.name
            result.append(item)
        return result

    def _refuse_unrenderable(self, conversation: Conversation) -> None:
        """Refuse tools described in prose: templates take tools as JSON schemas. Refuse special
        tokens in tool-call arguments and tool specs, which reach the template as-is."""
        values: list[tuple[str, Any]] = []
        for k, spec in enumerate(conversation.tools):
            if spec.text is not None:
                raise RenderError(conversation, f"tools[{k}]", PROSE_TOOL)
            values.append((f"tools[{k}]", spec.function()))
        for i, message in enumerate(conversation.messages):
            for j, call in enumerate(message.tool_calls):
                values.append((f"messages[{i}].tool_calls[{j}]", call.model_dump()))
        for field, value in values:
            text = json.dumps(value, ensure_ascii=False)
            special = next((s for s in self._specials if s in text), None)
            if special is not None:
                raise RenderError(
                    conversation, field, f"contains the special token text {special!r}"
                )

    def _apply(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        add_generation_prompt: bool,
    ) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except (
            Exception
        ) as exc:  # jinja raises TemplateError and arbitrary errors via raise_exception
            raise DomainLMError(f"the chat template failed on this conversation: {exc}") from None
        return str(text)

    def _trained_spans(
        self,
        conversation: Conversation,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        full: str,
    ) -> list[tuple[int, int]]:
        """Character spans of `full` that carry loss, one per trained message."""
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, message in enumerate(conversation.messages):
            if not message.trained:
                continue
            assistant = message.role == "assistant"
            before = self._apply(messages[:i], tools, add_generation_prompt=assistant) if i else ""
            after = self._apply(messages[: i + 1], tools, add_generation_prompt=False)
            start = len(before) if after.startswith(before) else _common_prefix(before, after)
            piece = after[start:].rstrip()
            if full.startswith(after[: start + len(piece)]) and start >= cursor:
                position = start
            else:  # the template renders earlier turns differently once more follow
                position = full.find(piece, cursor)
            if not piece or position < 0:
                raise RenderError(
                    conversation,
                    f"messages[{i}]",
                    f"cannot locate this {message.role} turn in the rendered template "
                    "(the template rewrites earlier turns); split the conversation",
                )
            spans.append((position, position + len(piece)))
            cursor = position + len(piece)
        return spans

    def _text_regions(
        self,
        conversation: Conversation,
        tools: list[dict[str, Any]],
        full: str,
        add_generation_prompt: bool,
    ) -> list[tuple[int, int]]:
        """Where message text sits in `full`, the template's output, found through sentinels.

        Templates may trim message text (Llama-3, Gemma); anything else is refused.
        """
        texts: list[str] = []
        marked = self._apply(
            self._template_messages(conversation, texts), tools, add_generation_prompt
        )
        for candidate in (texts, [text.strip() for text in texts]):
            regions, parts, position = [], [], 0
            for match in _SENTINEL.finditer(marked):
                parts.append(marked[position : match.start()])
                start = sum(map(len, parts))
                parts.append(candidate[int(match.group(1))])
                regions.append((start, start + len(parts[-1])))
                position = match.end()
            parts.append(marked[position:])
            if "".join(parts) == full:
                return regions
        raise DomainLMError(
            "the chat template rewrites message text beyond trimming; DomainLM cannot render it "
            "safely (use a template that inserts message content unchanged)"
        )

    def _encode(
        self, full: str, regions: list[tuple[int, int]], spans: list[tuple[int, int]]
    ) -> Rendered:
        """Tokenize `full` as the model would, except that no message text becomes a special token.

        The text is tokenized in one piece, so ids equal the tokenizer's own encoding of the
        template (piecewise encoding adds prefix spaces in SentencePiece-style tokenizers and
        breaks merges at piece edges). Only message text that a special-token string overlaps
        is cut out and encoded with special-token parsing off. Labels follow each token's
        start offset; tokenizers without offsets are cut at the span edges instead.
        """
        unsafe = self._unsafe_regions(full, regions)
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        edges = {p for region in unsafe for p in region}
        if not fast:
            edges |= {p for span in spans for p in span}
        cuts = sorted({0, len(full), *edges})
        ids: list[int] = []
        starts: list[int] = []
        for start, end in itertools.pairwise(cuts):
            piece_ids, offsets = self._encode_piece(full[start:end], (start, end) in unsafe, fast)
            ids += piece_ids
            starts += [start + offset for offset in offsets]
        labels = [
            token if any(a <= begin < b for a, b in spans) else IGNORE_INDEX
            for token, begin in zip(ids, starts, strict=True)
        ]
        return Rendered(ids, labels)

    def _unsafe_regions(self, full: str, regions: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """Message-text regions that some special-token string in `full` overlaps."""
        if not self._specials or not regions:
            return set()
        pattern = re.compile("|".join(map(re.escape, self._specials)))
        hits = [(m.start(), m.end()) for m in pattern.finditer(full)]
        return {(a, b) for a, b in regions if any(s < b and a < e for s, e in hits)}

    def _encode_piece(self, text: str, plain: bool, fast: bool) -> tuple[list[int], list[int]]:
        """Ids of `text` and each token's start offset within it (0 without offsets)."""
        if not text:
            return [], []
        encoded = self.tokenizer(
            text, add_special_tokens=False, split_special_tokens=plain, return_offsets_mapping=fast
        )
        ids = list(encoded["input_ids"])
        offsets = [start for start, _ in encoded["offset_mapping"]] if fast else [0] * len(ids)
        return ids, offsets

    # -- parsing -----------------------------------------------------------------------------

    @property
    def stop_strings(self) -> list[str]:
        stops = [marker for marker in _END_MARKERS if marker in self._specials]
        eos = getattr(self.tokenizer, "eos_token", None)
        if eos and eos not in stops:
            stops.append(str(eos))
        return stops

    def parse(self, text: str, tools: list[str] | None = None) -> Message:
        text = self.cut_at_stop(text)
        if "<tool_call>" in text:
            calls = [parse_json_call(body.strip()) for body in _HERMES.findall(text)]
            return Message(
                role="assistant", content=_HERMES.sub("", text).strip(), tool_calls=calls
            )
        contents: list[str] = []
        calls = []
        for part in text.split("<|assistant|>"):
            call = _glm4_call(part, tools)
            if call is not None:
                calls.append(call)
            elif part.strip():
                contents.append(part.strip())
        if not calls and tools and len(contents) == 1 and contents[0].startswith("{"):
            bare = _bare_json_call(contents[0], tools)
            if bare is not None:
                return Message(role="assistant", content="", tool_calls=[bare])
        return Message(role="assistant", content="\n\n".join(contents), tool_calls=calls)


def _glm4_call(part: str, tools: list[str] | None) -> ToolCall | None:
    """GLM-4 writes `name\\n{json arguments}` as an assistant turn."""
    name, newline, body = part.strip("\n").partition("\n")
    name = name.strip()
    if not newline or not TOOL_NAME.fullmatch(name) or not body.strip().startswith("{"):
        return None
    if tools is not None and name not in tools:
        return None
    try:
        arguments = json.loads(body)
    except json.JSONDecodeError as exc:
        if tools is None:
            return None
        raise ToolCallParseError(
            f"call of {name}: arguments are not valid JSON ({exc.msg})"
        ) from None
    if not isinstance(arguments, dict):
        raise ToolCallParseError(f"call of {name}: arguments must be a JSON object")
    return ToolCall(name=name, arguments=arguments)


def _bare_json_call(text: str, tools: list[str]) -> ToolCall | None:
    try:
        call = parse_json_call(text)
    except ToolCallParseError:
        return None
    return call if call.name in tools else None


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
