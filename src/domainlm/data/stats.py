"""Dataset statistics: counts by role and tool, text lengths, and token lengths for a format."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from domainlm.chat.conversation import Conversation
from domainlm.chat.formats import ChatFormat
from domainlm.chat.formats.base import RenderError
from domainlm.errors import DomainLMError


def summarize(values: list[int]) -> dict[str, float]:
    """min / mean / p50 / p95 / max of a list (nearest-rank percentiles)."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": rank(0.5),
        "p95": rank(0.95),
        "max": ordered[-1],
    }


@dataclass
class TokenLengths:
    """Token counts of rendered conversations, and those that could not be rendered."""

    total: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)

    def summary(self, max_seq_len: int | None) -> dict[str, Any]:
        result: dict[str, Any] = {
            "tokens": summarize(self.total),
            "trained_tokens": summarize(self.trained),
            "total_tokens": sum(self.total),
            "total_trained_tokens": sum(self.trained),
        }
        if max_seq_len:
            result["over_max_seq_len"] = sum(n > max_seq_len for n in self.total)
            result["max_seq_len"] = max_seq_len
        return result


def token_lengths(conversations: list[Conversation], chat_format: ChatFormat) -> TokenLengths:
    """Render every conversation; a conversation the format cannot render is a failure."""
    lengths = TokenLengths()
    for index, conversation in enumerate(conversations):
        try:
            rendered = chat_format.render(conversation)
        except DomainLMError as exc:
            # The caller names the record; a RenderError's message names it too.
            reason = exc.reason if isinstance(exc, RenderError) else str(exc)
            lengths.failures.append((index, reason))
            continue
        lengths.total.append(len(rendered.input_ids))
        lengths.trained.append(rendered.trained_tokens)
    return lengths


def dataset_stats(conversations: list[Conversation]) -> dict[str, Any]:
    """Counts and character lengths of a list of conversations."""
    roles: Counter[str] = Counter()
    tools: Counter[str] = Counter()
    chars: dict[str, list[int]] = {}
    turns = []
    for conversation in conversations:
        turns.append(sum(m.role == "user" for m in conversation.messages))
        for message in conversation.messages:
            roles[message.role] += 1
            chars.setdefault(message.role, []).append(len(message.content))
            tools.update(call.name for call in message.tool_calls)
    return {
        "conversations": len(conversations),
        "messages": dict(roles),
        "user_turns": summarize(turns),
        "with_tools": sum(bool(c.tools) for c in conversations),
        "tool_calls": dict(tools.most_common()),
        "chars": {role: summarize(values) for role, values in chars.items()},
    }
