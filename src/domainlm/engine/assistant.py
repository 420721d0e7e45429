"""Assistant.reply: retrieve -> render -> generate -> parse -> run tools -> repeat -> verify.

One reply of a session: pick the expert (or route), keep the retrieved articles for
follow-up turns on the same topic and retrieve again when the topic changes, render the
conversation with the expert's system prompt, the articles (with the instruction to ignore
irrelevant ones) and the tools, generate, run any tool calls and feed the observations
back (up to `max_tool_steps`), then check every statute citation of the answer against the
knowledge base.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domainlm.chat.conversation import Conversation, Message, ToolCall, ToolSpec
from domainlm.chat.formats import ChatFormat
from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.generation import Generator, Request, Sampling
from domainlm.engine.router import Router
from domainlm.errors import DomainLMError, ToolCallParseError
from domainlm.kb.citations import Citation
from domainlm.kb.store import Chunk
from domainlm.kb.verdicts import CURRENT
from domainlm.tools import Observation, Toolset

DEFAULT_SYSTEM = "你是一名专业、严谨的助手。"
ARTICLES_HEADER = (
    "以下是检索到的可能相关的法条。只引用与问题相关的条文，与问题无关的请忽略；不要编造法条。\n"
)
TOOLS_HEADER = (
    "You can call tools. To call one, answer with only "
    '<tool_call>{{"name": NAME, "arguments": {{...}}}}</tool_call>. Tools:\n{specs}'
)
EXAMPLE_QUESTION = "How much is 250*(1+0.03)**4?"
EXAMPLE_CALL = (
    '<tool_call>{"name": "calculator", "arguments": {"expression": "250*(1+0.03)**4"}}</tool_call>'
)
#: Articles retrieved per question, and kept at most across follow-up turns.
TOP_K, MAX_KEPT = 3, 6


@dataclass
class Session:
    """The state of one chat: messages so far, articles in use, the chosen expert."""

    messages: list[Message] = field(default_factory=list)
    articles: list[Chunk] = field(default_factory=list)
    expert: str | None = None


@dataclass
class Reply:
    text: str
    expert: str
    route: str
    articles: list[Chunk]
    citations: list[Citation]
    tool_trace: list[Observation]
    timings: dict[str, float]

    @property
    def unverified(self) -> list[Citation]:
        return [c for c in self.citations if c.verdict != CURRENT]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "expert": self.expert,
            "route": self.route,
            "articles": [
                {"citation": a.citation, "text": a.text, "status": a.status} for a in self.articles
            ],
            "citations": [c.to_dict() for c in self.citations],
            "tool_trace": [o.to_dict() for o in self.tool_trace],
            "timings": self.timings,
        }


def _signature(spec: ToolSpec) -> str:
    """`name(arg: type, ...) - description`: shorter than JSON schemas, which small models
    read better."""
    properties = spec.parameters.get("properties", {})
    args = ", ".join(
        f"{name}: {schema.get('type', 'enum' if 'enum' in schema else 'any')}"
        for name, schema in properties.items()
    )
    return f"- {spec.name}({args}): {spec.description}"


class Assistant:
    """Answers with one base, its experts, an optional knowledge base and toolset."""

    def __init__(
        self,
        pool: AdapterPool,
        chat_format: ChatFormat,
        kb: Any = None,
        toolset: Toolset | None = None,
        sampling: Sampling | None = None,
        top_k: int = TOP_K,
        max_tool_steps: int = 4,
    ):
        self.pool = pool
        self.format = chat_format
        self.kb = kb
        self.toolset = toolset
        self.generator = Generator(pool)
        self.sampling = sampling or Sampling(max_new_tokens=256)
        self.top_k = top_k
        self.max_tool_steps = max_tool_steps
        self._shows_tools: dict[tuple[str, ...], bool] = {}

    def reply(
        self,
        session: Session,
        text: str,
        expert: str | None = None,
        use_kb: bool = True,
        tool_choice: str | None = None,
        use_tools: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> Reply:
        """Answer `text` in `session` (which is updated with the exchange).

        Args:
            expert: an expert name, "auto" to route by the cards, None/"base" for the base.
            tool_choice: a tool name to force the first step to call it.
            on_text: called with each piece of the answer as it is generated (when no
                tools are in play; with tools the reply is known only after the loop).
        """
        timings: dict[str, float] = {}
        started = time.perf_counter()
        toolset = self.toolset if use_tools else None
        name, route = self._choose(expert or session.expert, text)
        session.messages.append(Message(role="user", content=text))
        if self.kb is not None and use_kb:
            session.articles = self._articles(session.articles, text)
        timings["retrieve_s"] = time.perf_counter() - started
        trace: list[Observation] = []
        answer = ""
        turn = time.perf_counter()
        for step in range(self.max_tool_steps + 1):
            message, error = self._generate(
                session, name, toolset, tool_choice if step == 0 else None,
                on_text if toolset is None else None,
            )  # fmt: skip
            if not message.tool_calls or toolset is None or step == self.max_tool_steps:
                answer = message.content
                session.messages.append(Message(role="assistant", content=answer))
                break
            session.messages.append(message)
            for call in message.tool_calls:
                if error is not None:  # the model's call could not be read: tell it why
                    observation = Observation(call.name, {}, f"error: {error}", False)
                else:
                    observation = toolset.call(call)
                trace.append(observation)
                session.messages.append(
                    Message(
                        role="tool",
                        content=observation.content,
                        tool_call_id=call.id,
                        name=call.name,
                    )
                )
        timings["generate_s"] = time.perf_counter() - turn
        citations: list[Citation] = []
        if self.kb is not None:
            check = time.perf_counter()
            citations = self.kb.verify(answer)
            timings["verify_s"] = time.perf_counter() - check
        timings["total_s"] = time.perf_counter() - started
        return Reply(answer, name, route, list(session.articles), citations, trace, timings)

    def _choose(self, expert: str | None, text: str) -> tuple[str, str]:
        if expert == "auto":
            route = Router(dict(self.pool.cards)).route(text)
            return route.expert, route.reason
        name = self.pool.resolve(expert)
        return name, "chosen" if name != BASE else "base model"

    def _articles(self, kept: list[Chunk], text: str) -> list[Chunk]:
        """Retrieve for `text`; a follow-up on the same topic keeps the earlier articles."""
        found = self.kb.search(text, k=self.top_k)
        if not kept:
            return found
        kept_ids = {c.id for c in kept}
        # Same topic when the best match for the new turn is already in use (or nothing
        # matches, as for "and then?"); otherwise the conversation moved on.
        same_topic = not found or found[0].id in kept_ids
        if not same_topic:
            return found  # the topic changed: retrieve afresh
        merged = list(kept) + [c for c in found if c.id not in kept_ids]
        return merged[:MAX_KEPT]

    def _conversation(self, session: Session, name: str, toolset: Toolset | None) -> Conversation:
        card = self.pool.card(name)
        system = (card.system_prompt if card and card.system_prompt else None) or DEFAULT_SYSTEM
        if session.articles:
            lines = [f"{i}. {a.citation}：{a.text}" for i, a in enumerate(session.articles, 1)]
            system += "\n\n" + ARTICLES_HEADER + "\n".join(lines)
        tools: list[ToolSpec] = toolset.specs if toolset else []
        conversation = Conversation(
            messages=[Message(role="system", content=system), *session.messages], tools=tools
        )
        if tools and not self._template_shows_tools(tools):
            # The template has no tool syntax: describe the tools and show one call, which
            # small models need to produce a well-formed one.
            specs = "\n".join(_signature(t) for t in tools)
            conversation.messages[0].content += "\n\n" + TOOLS_HEADER.format(specs=specs)
            if any(t.name == "calculator" for t in tools):
                conversation.messages[1:1] = [
                    Message(role="user", content=EXAMPLE_QUESTION),
                    Message(role="assistant", content=EXAMPLE_CALL),
                ]
        return conversation

    def _template_shows_tools(self, tools: list[ToolSpec]) -> bool:
        """Whether the chat format puts tool schemas into the prompt by itself (a property
        of the template and the tools, so probed once per toolset on a one-line chat)."""
        key = tuple(t.name for t in tools)
        if key not in self._shows_tools:
            probe = Conversation(messages=[Message(role="user", content="?")], tools=tools)
            without = probe.model_copy(update={"tools": []})
            shown = self.format.render_prompt(probe) != self.format.render_prompt(without)
            self._shows_tools[key] = shown
        return self._shows_tools[key]

    def _generate(
        self,
        session: Session,
        name: str,
        toolset: Toolset | None,
        tool_choice: str | None,
        on_text: Callable[[str], None] | None = None,
    ) -> tuple[Message, str | None]:
        """The model's next message, and why its tool call could not be read (if so)."""
        conversation = self._conversation(session, name, toolset)
        prompt = self.format.render_prompt(conversation)
        prefix = ""
        if tool_choice is not None:
            if toolset is None or tool_choice not in toolset:
                raise DomainLMError(f"tool_choice {tool_choice!r}: no such tool")
            # Forced call: the reply starts as the call, the model writes the arguments.
            prefix = f'<tool_call>{{"name": "{tool_choice}", "arguments": {{'
            prompt = prompt + self.format.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        stops = [*self.format.stop_strings, "</tool_call>"] if prefix else self.format.stop_strings
        request = Request(prompt, name, self.sampling, stops)
        if on_text is not None:
            pieces = []
            for piece in self.generator.stream(request):
                pieces.append(piece)
                on_text(piece)
            text = prefix + "".join(pieces)
        else:
            text = prefix + self.generator.run([request])[0].text
        if "<tool_call>" in text and "</tool_call>" not in text:
            # The stop string ended the call, or the model wrote a cut-off closing tag.
            text = text.rstrip().removesuffix("</tool_call").rstrip() + "</tool_call>"
        tools = list(toolset.tools) if toolset else None
        try:
            message = self.format.parse(text, tools)
        except ToolCallParseError as exc:
            call = ToolCall(name=tool_choice or "unknown", id=f"call_{uuid.uuid4().hex[:8]}")
            return Message(role="assistant", content="", tool_calls=[call]), str(exc)
        for call in message.tool_calls:
            call.id = call.id or f"call_{uuid.uuid4().hex[:8]}"
        return message, None
