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
"""

from __future__ import annotations

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
