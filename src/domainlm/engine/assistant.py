"""Assistant.reply: retrieve -> render -> generate -> parse -> run tools -> repeat -> verify.

One reply of a session: pick the expert (or route), keep the retrieved articles for
follow-up turns on the same topic and retrieve again when the topic changes, render the
conversation with the expert's system prompt, the articles (with the instruction to ignore
irrelevant ones) and the tools, generate, run any tool calls and feed the observations
back (up to `max_tool_steps`), then check every statute citation of the answer against the
knowledge base.

Tools and small models: where the chat template has no tool syntax the tools are described
in the system prompt, without an example call (a 135M model copied the example's call into
answers to legal questions), and tools that compute on the user's numbers are offered only
for a question holding a number. A call whose numbers appear nowhere in the conversation is
not run, and the model answers without tools instead (`domainlm.tools.grounding`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domainlm.chat.conversation import Conversation, Message, ToolCall, ToolSpec
from domainlm.chat.formats import ChatFormat
from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.generation import Engine, Request, Sampling
from domainlm.engine.local import LocalEngine
from domainlm.engine.router import Router
from domainlm.errors import DomainLMError, ToolCallParseError
from domainlm.kb.base import MAX_QUERY_CHARS
from domainlm.kb.citations import Citation
from domainlm.kb.store import Chunk
from domainlm.kb.verdicts import CURRENT
from domainlm.tools import Observation, Toolset
from domainlm.tools.grounding import TRIVIAL, call_numbers, grounded, numbers_in

DEFAULT_SYSTEM = "你是一名专业、严谨的助手。"
ARTICLES_HEADER = (
    "以下是检索到的可能相关的法条。只引用与问题相关的条文，与问题无关的请忽略；不要编造法条。\n"
)
#: How tools are described where the template has no tool syntax: the call's form with
#: placeholders, never a concrete call (which small models repeat whatever is asked).
TOOLS_HEADER = (
    "You can call tools. Call one only when the question needs it, by answering with only "
    '<tool_call>{{"name": "TOOL", "arguments": {{"PARAMETER": VALUE}}}}</tool_call>; '
    "otherwise answer directly. Tools:\n{specs}"
)
#: Articles retrieved per question, and kept at most across follow-up turns.
TOP_K, MAX_KEPT = 3, 6


def with_articles(system: str, articles: list[Chunk]) -> str:
    """The system prompt with the retrieved articles, as every reply renders them (synth's
    retrieval-grounded rows use it too, so training and serving see one format)."""
    if not articles:
        return system
    lines = [f"{i}. {a.citation}：{a.text}" for i, a in enumerate(articles, 1)]
    return system + "\n\n" + ARTICLES_HEADER + "\n".join(lines)


@dataclass
class Session:
    """The state of one chat: messages so far, articles in use, the chosen expert."""

    messages: list[Message] = field(default_factory=list)
    articles: list[Chunk] = field(default_factory=list)
    expert: str | None = None
    system: str | None = None  # instead of the expert card's system prompt
    sampling: Sampling | None = None  # instead of the Assistant's
    usage: Counter[str] = field(default_factory=Counter)  # tokens of every generation
    finish_reason: str = "stop"  # of the last generation: "stop" or "length"


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
        engine: Engine | None = None,
    ):
        self.pool = pool
        self.format = chat_format
        self.kb = kb
        self.toolset = toolset
        self.engine: Engine = engine or LocalEngine(pool)
        self._owns_engine = engine is None
        self.sampling = sampling or Sampling(max_new_tokens=256)
        self.top_k = top_k
        self.max_tool_steps = max_tool_steps
        self._shows_tools: dict[tuple[str, ...], bool] = {}
        self._subsets: dict[tuple[str, ...], Toolset | None] = {}

    def close(self) -> None:
        """Stop the engine this Assistant started (one handed to it is the caller's)."""
        if self._owns_engine:
            self.engine.close()

    def reply(
        self,
        session: Session,
        text: str,
        expert: str | None = None,
        use_kb: bool = True,
        tool_choice: str | None = None,
        use_tools: bool = True,
        on_text: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Reply:
        """Answer `text` in `session` (which is updated with the exchange).

        Args:
            expert: an expert name, "auto" to route by the cards, None/"base" for the base.
            tool_choice: a tool name to force the first step to call it.
            on_text: called with each piece of the answer as it is generated, when it is
                generated without tools in the prompt (with tools, whether the model
                answers or calls one is known only when it is done).
            stop: set from another thread (a server's client went away) to stop the reply
                within one generated token, in any step of the tool loop; the session
                keeps what was shown, as after Ctrl-C.

        Raises:
            DomainLMError: for an empty `text`, an unknown expert or `tool_choice`.
            Stopped: `stop` was set.
            KeyboardInterrupt: Ctrl-C stopped the reply; what was shown of it stays in
                the session as the answer.
        """
        if not text.strip():
            raise DomainLMError("the question is empty")
        timings: dict[str, float] = {}
        started = time.perf_counter()
        name, route = self._choose(expert or session.expert, text)
        before = len(session.messages)
        session.messages.append(Message(role="user", content=text))
        # Without the KB (chat's /kb off) the articles kept from earlier turns go too.
        use_kb = use_kb and self.kb is not None
        session.articles = self._articles(session.articles, text) if use_kb else []
        timings["retrieve_s"] = time.perf_counter() - started
        toolset = self._offered(session, self.toolset if use_tools else None, tool_choice)
        trace: list[Observation] = []
        shown: list[str] = []

        def show(piece: str) -> None:
            shown.append(piece)
            if on_text is not None:
                on_text(piece)

        turn = time.perf_counter()
        try:
            stream = show if on_text is not None else None
            answer = self._tool_loop(session, name, toolset, tool_choice, stream, trace, stop)
        except (KeyboardInterrupt, Stopped):
            _keep_shown(session, before, "".join(shown))
            raise
        timings["generate_s"] = time.perf_counter() - turn
        citations: list[Citation] = []
        if self.kb is not None:
            check = time.perf_counter()
            citations = self.kb.verify(answer)
            timings["verify_s"] = time.perf_counter() - check
        timings["total_s"] = time.perf_counter() - started
        return Reply(answer, name, route, list(session.articles), citations, trace, timings)

    def _tool_loop(
        self,
        session: Session,
        name: str,
        toolset: Toolset | None,
        tool_choice: str | None,
        on_text: Callable[[str], None] | None,
        trace: list[Observation],
        stop: threading.Event | None = None,
    ) -> str:
        """Generate, run the calls and feed their observations back, until the model
        answers (or `max_tool_steps` steps ran); the answer."""
        for step in range(self.max_tool_steps + 1):
            if stop is not None and stop.is_set():
                raise Stopped("the reply was stopped")
            message, error = self._generate(
                session, name, toolset, tool_choice if step == 0 else None,
                on_text if toolset is None else None, stop,
            )  # fmt: skip
            calls = [] if error else message.tool_calls
            made_up = [call for call in calls if not self._grounded(call, session)]
            if toolset is not None and made_up and len(made_up) == len(message.tool_calls):
                # Numbers nobody asked about (a small model repeating something it read):
                # not run, and the model answers without tools instead.
                trace += [_not_run(call) for call in made_up]
                toolset = None
                message, error = self._generate(session, name, None, None, on_text, stop)
            if not message.tool_calls or toolset is None or step == self.max_tool_steps:
                session.messages.append(Message(role="assistant", content=message.content))
                return message.content
            session.messages.append(message)
            for call in message.tool_calls:
                if error is not None:  # the model's call could not be read: tell it why
                    observation = Observation(call.name, {}, f"error: {error}", False)
                elif any(call is c for c in made_up):
                    observation = _not_run(call)
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
        raise AssertionError("unreachable: the last step always answers")

    def _offered(
        self, session: Session, toolset: Toolset | None, tool_choice: str | None
    ) -> Toolset | None:
        """The tools offered for the question just asked."""
        if toolset is None or tool_choice is not None or self._template_shows_tools(toolset.specs):
            return toolset  # a template with tool syntax: the model was trained to choose
        # The assistant describes the tools itself, and small models read that text as
        # something to talk about or to call whatever the question (SmolLM2 answered 你好
        # with "I'm a math assistant"). Tools computing on the user's numbers could not be
        # called with grounded arguments on a question holding none: they are left out.
        if numbers_in(session.messages[-1].content) - TRIVIAL:
            return toolset
        kept = [t for t in toolset.tools.values() if not t.grounded]
        if len(kept) == len(toolset.tools):
            return toolset
        key = tuple(t.name for t in kept)
        if key not in self._subsets:
            self._subsets[key] = Toolset(kept) if kept else None
        return self._subsets[key]

    def _grounded(self, call: ToolCall, session: Session) -> bool:
        """Whether `call` computes on numbers of the conversation (for tools that must)."""
        tool = self.toolset.tools.get(call.name) if self.toolset else None
        if tool is None or not tool.grounded:
            return True
        known: set[float] = set()
        for message in session.messages:
            known |= numbers_in(message.content)
        return grounded(call.arguments, known)

    def _choose(self, expert: str | None, text: str) -> tuple[str, str]:
        if expert == "auto":
            route = Router(dict(self.pool.cards)).route(text)
            return route.expert, route.reason
        name = self.pool.resolve(expert)
        return name, "chosen" if name != BASE else "base model"

    def _articles(self, kept: list[Chunk], text: str) -> list[Chunk]:
        """Retrieve for `text`; a follow-up on the same topic keeps the earlier articles."""
        # A question pasted after a long text is searched by its end (the KB takes
        # MAX_QUERY_CHARS: a whole contract would be refused, not answered).
        found = self.kb.search(text[-MAX_QUERY_CHARS:], k=self.top_k)
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
        system = session.system or (
            (card.system_prompt if card and card.system_prompt else None) or DEFAULT_SYSTEM
        )
        system = with_articles(system, session.articles)
        tools: list[ToolSpec] = toolset.specs if toolset else []
        conversation = Conversation(
            messages=[Message(role="system", content=system), *session.messages], tools=tools
        )
        return self.describe_tools(conversation)

    def describe_tools(self, conversation: Conversation) -> Conversation:
        """`conversation` as the model should see it: when its template has no tool syntax,
        the tools are described in the system turn (one is added if there is none)."""
        tools = conversation.tools
        if not tools or self._template_shows_tools(tools):
            return conversation
        specs = TOOLS_HEADER.format(specs="\n".join(_signature(t) for t in tools))
        messages = list(conversation.messages)
        if messages and messages[0].role == "system":
            first = messages[0]
            messages[0] = first.model_copy(update={"content": first.content + "\n\n" + specs})
        else:
            messages.insert(0, Message(role="system", content=specs))
        return conversation.model_copy(update={"messages": messages})

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
        stop: threading.Event | None = None,
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
        request = Request(prompt, name, session.sampling or self.sampling, stops)
        if on_text is not None or stop is not None:
            stream = self.engine.submit(request)
            try:
                for piece in stream:
                    if stop is not None and stop.is_set():
                        raise Stopped("the reply was stopped")
                    if on_text is not None:
                        on_text(piece)
                completion = stream.result()
            finally:  # at once: after a Ctrl-C (or a caller gone) the generation stops too
                stream.cancel()
        else:
            completion = self.engine.run([request])[0]
        text = prefix + completion.text
        session.usage["prompt_tokens"] += len(prompt)
        session.usage["completion_tokens"] += completion.tokens
        session.finish_reason = "length" if completion.finish_reason == "length" else "stop"
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


class Stopped(DomainLMError):
    """A reply stopped by its `stop` event."""


def _keep_shown(session: Session, before: int, shown: str) -> None:
    """After Ctrl-C stopped a reply: the question and the reply as far as it was shown stay
    in the session (what the user saw is what the model sees next), the turn's tool steps
    go; with nothing shown, the question goes too (no unanswered turn is left)."""
    question = session.messages[before]
    del session.messages[before:]
    if shown.strip():
        session.messages += [question, Message(role="assistant", content=shown.strip())]


def _not_run(call: ToolCall) -> Observation:
    numbers = ", ".join(f"{n:g}" for n in sorted(call_numbers(call.arguments)))
    reason = f"not run: none of its numbers ({numbers}) is in the conversation"
    return Observation(call.name, call.arguments, reason, False)
