"""An LLM judge through any OpenAI-compatible endpoint, read strictly.

The judge sees the question, the reference answer when there is one, the answer to judge
and the criteria, and must reply with one JSON object giving every criterion an integer
score in range (DISC-Fin-Eval's four by default: accuracy, usefulness, language,
reflection, 1-5). Anything else — prose around the JSON, a missing or extra criterion, a
score out of range — is the item's error with the judge's raw reply kept, never a guess.
"""

from __future__ import annotations

import json
import re
from typing import Any

from domainlm.errors import DomainLMError

#: DISC-Fin-Eval's criteria for judged answers.
DISC_CRITERIA = {
    "accuracy": "准确性：回答中的事实、数字、法规与结论是否正确，没有错误或编造",
    "usefulness": "实用性：回答是否切题，能否真正帮助提问者解决问题",
    "language": "语言质量：表达是否清楚、通顺、有条理",
    "reflection": "思考性：是否给出理由与分析，而非只有结论",
}

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def judge_prompt(
    question: str, answer: str, reference: str, criteria: dict[str, str], scale: int
) -> str:
    lines = [f'- "{name}": {text}' for name, text in criteria.items()]
    keys = ", ".join(f'"{name}": <1-{scale}>' for name in criteria)
    parts = [
        "你是一名严格的评审专家。请根据以下标准，为助手的回答逐项打分"
        f"（整数 1 到 {scale}，{scale} 为最好）。",
        "标准：\n" + "\n".join(lines),
        f"【问题】\n{question}",
    ]
    if reference:
        parts.append(f"【参考答案】\n{reference}")
    parts.append(f"【助手的回答】\n{answer}")
    parts.append(f"只输出一个 JSON 对象，不要输出其他内容：{{{keys}}}")
    return "\n\n".join(parts)


def read_verdict(raw: str, criteria: dict[str, str], scale: int) -> dict[str, float]:
    """The scores in a judge's reply.

    Raises:
        DomainLMError: for a reply that is not exactly the JSON asked for.
    """
    text = raw.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise DomainLMError(
            f"judge answered off-format (not one JSON object): {raw[:200]!r}"
        ) from None
    if not isinstance(data, dict) or set(data) != set(criteria):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DomainLMError(f"judge answered off-format: expected {sorted(criteria)}, got {got}")
    scores = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= scale:
            raise DomainLMError(
                f"judge answered off-format: {name} = {value!r} (an integer 1-{scale})"
            )
        scores[name] = float(value)
    return scores


class Judge:
    """The judge model behind an endpoint."""

    def __init__(
        self, url: str, model: str, api_key: str | None, criteria: dict[str, str], scale: int
    ):
        import openai

        self.client = openai.OpenAI(
            base_url=url, api_key=api_key or "none", max_retries=3, timeout=120
        )
        self.model, self.criteria, self.scale = model, criteria, scale

    def __call__(
        self, question: str, answer: str, reference: str
    ) -> tuple[str, str, dict[str, float]]:
        """(prompt, raw verdict, scores); DomainLMError for a judge that fails or answers
        off-format (the message holds the raw verdict)."""
        prompt = judge_prompt(question, answer, reference, self.criteria, self.scale)
        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0,
                max_tokens=200,
            )  # fmt: skip
        except Exception as exc:  # the judge down, refusing, timing out: the item's error
            raise DomainLMError(f"judge: {getattr(exc, 'message', None) or exc}") from None
        raw = (reply.choices[0].message.content or "") if reply.choices else ""
        return prompt, raw, read_verdict(raw, self.criteria, self.scale)


def scores_summary(scores: dict[str, float], scale: int) -> dict[str, Any]:
    """The item's criteria and their mean, scaled to 0-100 (`score`)."""
    mean = sum(scores.values()) / len(scores)
    return {**scores, "score": 100 * (mean - 1) / (scale - 1)}
