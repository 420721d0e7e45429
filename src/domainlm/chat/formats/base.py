"""The `ChatFormat` interface, and the token builder the chatglm3 format renders with.

A format turns a `Conversation` into `Rendered(input_ids, labels)` (labels are -100 where
no loss is taken, Hugging Face convention: the model shifts them itself), renders a
generation prompt, and parses generated text back into a `Message`.

Injection safety: text that comes from data (user, system, tool results, assistant text)
is encoded with special-token parsing off (`encode_plain`), so `<|system|>` typed by a user
is a handful of ordinary tokens, never the role token. `chatglm3` encodes every data text
that way; `hf` tokenizes the whole template and cuts out only the data text that a
special-token string overlaps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from domainlm.chat.conversation import Conversation, Message
from domainlm.errors import DomainLMError

IGNORE_INDEX = -100


@dataclass
class Rendered:
    """Token ids and aligned labels (`labels[i]` is `input_ids[i]` or -100)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class TokenBuilder:
    """Accumulates ids and labels piece by piece."""

    tokenizer: Any
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add_ids(self, ids: list[int], trained: bool) -> None:
        self.input_ids.extend(ids)
        self.labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))

    def add_text(self, text: str, trained: bool) -> None:
        """Data text: special-token strings inside it stay plain text."""
        if text:
            self.add_ids(encode_plain(self.tokenizer, text), trained)

    def build(self) -> Rendered:
        return Rendered(self.input_ids, self.labels)


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Encode data text with special-token parsing off."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def encode_markup(tokenizer: Any, text: str) -> list[int]:
    """Encode template text with special tokens recognised."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` if the tokenizer knows it as one special token, else None."""
    get_command = getattr(tokenizer, "get_command", None)  # ChatGLM's own tokenizer class
    if callable(get_command):
        try:
            return int(get_command(token))
        except (KeyError, AssertionError, ValueError):
            return None
    ids = encode_markup(tokenizer, token)
    if len(ids) == 1 and token in getattr(tokenizer, "all_special_tokens", [token]):
        return ids[0]
    return None


def special_strings(tokenizer: Any) -> list[str]:
    """All special-token strings of a tokenizer (added tokens included), longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", []))
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    found.update(str(tok) for tok in decoder.values() if getattr(tok, "special", False))
    return sorted((s for s in found if s), key=len, reverse=True)


class RenderError(DomainLMError):
    """A conversation that a chat format cannot render, named by its record when known.

    `reason` is `field: problem`; the message puts the record's `meta.source` (file:line)
    before it, so that a command rendering a whole file (training) says which record.
    """

    def __init__(self, conversation: Conversation, field: str, problem: str):
        self.reason = f"{field}: {problem}"
        source = conversation.meta.get("source")
        super().__init__(f"{source}: {self.reason}" if source else self.reason)


class ChatFormat(ABC):
    """Renders conversations to tokens and parses generated text; one instance per tokenizer."""

    name: ClassVar[str]

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @abstractmethod
    def render(self, conversation: Conversation) -> Rendered:
        """Token ids and labels for training: trained messages carry their ids, others -100."""

    @abstractmethod
    def render_prompt(self, conversation: Conversation) -> list[int]:
        """Token ids that end where the assistant's next reply begins."""

    @abstractmethod
    def parse(self, text: str, tools: list[str] | None = None) -> Message:
        """The assistant message in `text`, the decoded output after `render_prompt`.

        Raises:
            ToolCallParseError: for a tool call that cannot be read.
        """

    @property
    @abstractmethod
    def stop_strings(self) -> list[str]:
        """Strings that end an assistant reply during generation."""

    def cut_at_stop(self, text: str) -> str:
        """`text` up to the first stop string, which ends the reply."""
        for stop in self.stop_strings:
            text = text.split(stop, 1)[0]
        return text

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` with special tokens kept, as `parse` expects it."""
        return str(
            self.tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )


def require_special(tokenizer: Any, token: str, format_name: str) -> int:
    token_id = special_token_id(tokenizer, token)
    if token_id is None:
        raise DomainLMError(
            f"the tokenizer has no special token {token}: the {format_name} chat format needs "
            f"a tokenizer that defines it (use --chat-format hf for this model)"
        )
    return token_id
