"""The teacher: any OpenAI-compatible chat endpoint (a hosted model, your own vLLM,
`domainlm serve`), called with retries, timeouts and token accounting.

Retries are ours, not the `openai` client's (which is built with `max_retries=0`): a run's
report counts them, and a request that still fails becomes its item's recorded error
instead of an exception that ends the run. 429, 5xx, 408/409, timeouts, dropped
connections and answers that are not valid JSON are retried with exponential backoff and
jitter (a `Retry-After` header is honoured, up to a minute); 4xx errors such as a wrong key
or an unknown model are not.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from domainlm.errors import DomainLMError
from domainlm.eval.models import error_reason
from domainlm.synth.recipe import Price, TeacherSpec

T = TypeVar("T")
MAX_RETRY_AFTER_S = 60.0


@dataclass
class Usage:
    """What the teacher was asked and answered, for one item or a whole run."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Answers that came without a `usage` object (their tokens are not counted).
    unreported: int = 0
    seconds: float = 0.0

    def add(self, other: Usage | dict[str, Any]) -> None:
        values = other if isinstance(other, dict) else asdict(other)
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + values.get(item.name, 0))

    def cost(self, price: Price) -> float:
        return (self.prompt_tokens * price.input + self.completion_tokens * price.output) / 1e6

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["seconds"] = round(self.seconds, 3)
        return values


class TeacherError(DomainLMError):
    """A request that failed for good (after its retries), or an answer that never came in
    the asked format; `kind` is what the report counts, `raw` the last answer, if any."""

    def __init__(self, kind: str, message: str, raw: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.raw = raw


class Teacher:
    """Chat requests to one endpoint and model."""

    def __init__(self, spec: TeacherSpec, api_key: str | None, client: Any = None):
        import openai

        self.spec = spec
        self.client = client or openai.OpenAI(
            base_url=spec.url, api_key=api_key or "none", timeout=spec.timeout_s, max_retries=0
        )
        self._random = random.Random()
        self._lock = threading.Lock()

    def check(self) -> None:
        """The endpoint answers and serves the model (an error before any work starts)."""
        import openai

        try:
            served = [m.id for m in self.client.models.list()]
        except openai.APIStatusError as exc:
            raise DomainLMError(f"teacher {self.spec.url}: {error_reason(exc)}") from None
        except Exception as exc:  # connection refused, DNS, a bad URL
            raise DomainLMError(
                f"teacher {self.spec.url}: cannot connect ({error_reason(exc)}); "
                "is the server running?"
            ) from None
        if served and self.spec.model not in served:
            raise DomainLMError(
                f"teacher {self.spec.url} does not serve {self.spec.model!r} (it serves "
                f"{', '.join(sorted(served))})"
            )

    def close(self) -> None:
        self.client.close()

    def chat(
        self,
        messages: list[dict[str, str]],
        usage: Usage,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """The teacher's answer to `messages`.

        Raises:
            TeacherError: the request failed after its retries, or the answer was empty.
        """
        import openai

        retryable: tuple[type[Exception], ...] = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APIConnectionError,  # timeouts too
            openai.APIResponseValidationError,
            json.JSONDecodeError,
        )
        attempt = 0
        while True:
            started = time.perf_counter()
            usage.requests += 1
            try:
                reply = self.client.chat.completions.create(
                    model=self.spec.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.spec.temperature if temperature is None else temperature,
                    max_tokens=max_tokens or self.spec.max_tokens,
                )
            except Exception as exc:  # the openai client's errors, sorted below
                usage.seconds += time.perf_counter() - started
                if not isinstance(exc, (*retryable, openai.APIStatusError)):
                    raise
                status = getattr(exc, "status_code", None)
                again = isinstance(exc, retryable) or status in (408, 409)
                if not again or attempt >= self.spec.retries:
                    raise TeacherError(_kind(exc), f"teacher: {error_reason(exc)}") from None
                time.sleep(self._backoff(attempt, exc))
                attempt += 1
                usage.retries += 1
                continue
            usage.seconds += time.perf_counter() - started
            if reply.usage is None:
                usage.unreported += 1
            else:
                usage.prompt_tokens += reply.usage.prompt_tokens or 0
                usage.completion_tokens += reply.usage.completion_tokens or 0
            if not getattr(reply, "choices", None):
                raise TeacherError("empty", "teacher: an answer without choices")
            text = (reply.choices[0].message.content or "").strip()
            if not text:
                raise TeacherError("empty", "teacher: an empty answer")
            return text

    def ask(
        self,
        messages: list[dict[str, str]],
        parse: Callable[[str], T],
        usage: Usage,
        correction: str,
        temperature: float | None = None,
    ) -> T:
        """`parse` of the teacher's answer; an answer `parse` refuses (ValueError) is
        shown back with `correction` and asked again, `format_retries` times.

        Raises:
            TeacherError: `off_format` with the last answer, or a failed request.
        """
        history = list(messages)
        for attempt in range(self.spec.format_retries + 1):
            text = self.chat(history, usage, temperature)
            try:
                return parse(text)
            except ValueError as exc:
                if attempt == self.spec.format_retries:
                    raise TeacherError(
                        "off_format", f"teacher answered off-format: {exc}", text
                    ) from None
                history += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": correction},
                ]
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                return min(float(header), MAX_RETRY_AFTER_S)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        with self._lock:
            jitter = 0.5 + self._random.random()
        return self.spec.backoff_s * (2**attempt) * jitter


def _kind(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "unreachable"
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.InternalServerError):
        return "server_error"
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
        return "invalid_response"
    return "refused"


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The first JSON value in a teacher's answer: the whole text, a fenced block, or the
    first `[`/`{` that starts a value (models wrap JSON in prose).

    Raises:
        ValueError: no JSON value in the text.
    """
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except json.JSONDecodeError:
            continue
    raise ValueError(f"no JSON in {excerpt(text)!r}")


def excerpt(text: str, size: int = 80) -> str:
    """`text` on one line, cut to `size` characters."""
    text = " ".join(text.split())
    return text if len(text) <= size else text[:size] + "…"
