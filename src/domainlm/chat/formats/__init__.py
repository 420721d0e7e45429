"""Chat formats: `chatglm3` (ChatGLM3's native tokens) and `hf` (the tokenizer's template).

`auto` picks the one a tokenizer's model was trained with (`choose_format`); every command
and library caller that takes a format name goes through `get_format`.
"""

from __future__ import annotations

from typing import Any

from domainlm.chat.formats.base import IGNORE_INDEX, ChatFormat, Rendered, special_token_id
from domainlm.chat.formats.chatglm3 import ChatGLM3Format
from domainlm.chat.formats.hf import HFTemplateFormat
from domainlm.errors import DomainLMError

FORMATS: dict[str, type[ChatFormat]] = {"chatglm3": ChatGLM3Format, "hf": HFTemplateFormat}
AUTO = "auto"
#: Every name `get_format` takes, for option choices and config validation.
FORMAT_CHOICES: tuple[str, ...] = (AUTO, *FORMATS)
# ChatGLM3's own special tokens; GLM-4 writes `<sop>` where ChatGLM3 writes `sop`.
_CHATGLM3_TOKENS = ("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")


def choose_format(tokenizer: Any) -> str:
    """The chat format of `tokenizer`'s model: `chatglm3` for ChatGLM3's tokenizer, else `hf`.

    ChatGLM3's tokenizer is known by its own special tokens, and by being ChatGLM3's
    tokenizer class (`build_chat_input`, its remote code) or having no chat template. A
    tokenizer with both ChatGLM3's tokens and a chat template of its own (the built-in tiny
    one) follows its template.
    """
    if not all(special_token_id(tokenizer, token) is not None for token in _CHATGLM3_TOKENS):
        return "hf"
    own_class = callable(getattr(tokenizer, "build_chat_input", None))
    return "chatglm3" if own_class or not getattr(tokenizer, "chat_template", None) else "hf"


def get_format(name: str, tokenizer: Any) -> ChatFormat:
    """The chat format called `name` (`auto`, `chatglm3` or `hf`), bound to `tokenizer`.

    The result's `name` is the format chosen, also for `auto`: record that one.
    """
    if name == AUTO:
        name = choose_format(tokenizer)
    try:
        cls = FORMATS[name]
    except KeyError:
        raise DomainLMError(
            f"unknown chat format {name!r} (choose from {', '.join(FORMAT_CHOICES)})"
        ) from None
    return cls(tokenizer)


__all__ = [
    "AUTO",
    "FORMATS",
    "FORMAT_CHOICES",
    "IGNORE_INDEX",
    "ChatFormat",
    "Rendered",
    "choose_format",
    "get_format",
]
