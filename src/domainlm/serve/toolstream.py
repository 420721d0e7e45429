"""Streaming a reply that may turn out to be a tool call.

A chat model writes a tool call as text (`<tool_call>{...}</tool_call>` in Qwen/Hermes
templates, `name\\n{...}` in GLM-4, `name\\n```python\\ntool_call(...)```` in ChatGLM3). A
server that streams must not send the call's text to the client as content, yet should not
hold back an ordinary answer until it is done (LLaMA-Factory refuses stream+tools; ChatGLM3's
demo guesses a call from `'get_' in output`). `CallSplitter` sends text as soon as it cannot
be the start of a call: the opening of a reply is held while it could still begin a call
(a marker, `{`, a code fence, or an offered tool's name and a newline); later, text is
held only from a call marker on, and a trailing fragment that could begin one. What is
held is read with the chat format's own parser when the reply ends.

`CallStreamer` reads the held text as it grows and streams each call as OpenAI does: the
call's id and name as soon as the name is written, then its arguments' JSON text piece by
piece while the model writes it (the JSON forms: `<tool_call>{"name": ..., "arguments":
{...}}`, the same without the tags, GLM-4's `name\\n{...}`). ChatGLM3's Python call, or a
call whose keys come in another order, is sent whole when the reply ends.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

#: Markers that begin a call anywhere in a reply.
MARKERS = ("<tool_call>", "<|assistant|>")
#: What a reply that is only a call may begin with (besides an offered tool's name).
OPENINGS = (*MARKERS, "{", "```", "[")


class CallSplitter:
    """Feed it a reply's pieces; it returns the text that is surely content."""

    def __init__(self, tool_names: list[str]):
        self.openings = (*OPENINGS, *(f"{name}\n" for name in tool_names))
        self.text = ""
        self.sent = 0  # characters of `text` handed out as content
        self.holding = False  # a call may have begun at `sent`: hold the rest

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.holding:
            return ""
        if self.sent == 0:
            opening = self.text.lstrip()
            if not opening:
                return ""
            if any(opening.startswith(o) for o in self.openings):
                self.holding = True
                return ""
            if any(o.startswith(opening) for o in self.openings):
                return ""  # could still become one
        rest = self.text[self.sent :]
        found = [i for i in (rest.find(m) for m in MARKERS) if i >= 0]
        if found:
            cut = min(found)
            self.holding = True
        else:
            cut = len(rest) - _partial_marker(rest)
        out = rest[:cut]
        self.sent += cut
        return out

    @property
    def held(self) -> str:
        """The text not handed out (a call, or content that looked like one)."""
        return self.text[self.sent :]


def _partial_marker(text: str) -> int:
    """Length of the longest end of `text` that begins a marker."""
    best = 0
    for marker in MARKERS:
        for size in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:size]):
                best = max(best, size)
                break
    return best


#: The head of a JSON call, up to where its arguments begin.
_JSON_HEAD = re.compile(
    r'\s*(?:<tool_call>\s*)?\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,'
    r'\s*"(?:arguments|parameters)"\s*:\s*(?=\{)'
)
#: What closes a JSON call after its arguments.
_JSON_TAIL = re.compile(r"\s*\}\s*(?:</tool_call>)?")


@dataclass
class StreamedCall:
    name: str
    arguments: str = ""  # the JSON text sent so far
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    complete: bool = False  # the arguments' closing brace was written


class CallStreamer:
    """Feed it the held text of a reply as it grows; it says which calls and argument
    pieces can be streamed. Once the text stops looking like a call it streams no more."""

    def __init__(self, tool_names: list[str]):
        self.tools = set(tool_names)
        self.glm_head = re.compile(
            r"\s*(" + "|".join(re.escape(n) for n in tool_names) + r")\n(?=\{)"
        )
        self.calls: list[StreamedCall] = []

    def feed(self, held: str) -> list[tuple[int, str]]:
        """The new pieces, as (call index, argument text); a call's first piece is ""
        and comes when its name is known (`calls[index].name`)."""
        out: list[tuple[int, str]] = []
        position, index = 0, 0
        while True:
            head = _JSON_HEAD.match(held, position)
            name = None
            if head is not None:
                try:
                    name = json.loads(f'"{head.group(1)}"')
                except json.JSONDecodeError:
                    return out
            elif index == 0:
                head = self.glm_head.match(held, position)
                name = head.group(1) if head is not None else None
            if head is None or name not in self.tools:
                return out
            if index == len(self.calls):
                self.calls.append(StreamedCall(name))
                out.append((index, ""))
            call = self.calls[index]
            if call.name != name:
                return out
            end, complete = _json_end(held, head.end())
            piece = held[head.end() + len(call.arguments) : end]
            if piece:
                call.arguments += piece
                out.append((index, piece))
            call.complete = complete
            if not complete:
                return out
            tail = _JSON_TAIL.match(held, end) if head.re is _JSON_HEAD else None
            if tail is None or not tail.group(0).endswith("</tool_call>"):
                return out  # one GLM-4 call, or the call's closing tag is not written yet
            position, index = tail.end(), index + 1


def _json_end(text: str, start: int) -> tuple[int, bool]:
    """Where the JSON object opening at `start` ends (or the text, if it is not closed
    yet), and whether it is closed."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1, True
    return len(text), False
