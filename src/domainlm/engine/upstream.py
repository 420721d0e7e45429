"""The upstream engine: the local engine's interface over an OpenAI-compatible server.

For scale, generation can run on an inference server of its own — vLLM started with
`--enable-lora --lora-modules NAME=EXPERT_FOLDER …` over the same expert folders, SGLang,
TGI or a llama.cpp server — while DomainLM keeps the rest: the Assistant renders the
prompt with the expert's chat format, retrieves and checks citations, runs the tools. The
same Request/Stream interface as `LocalEngine`, so callers do not know which one they have.

Prompts go up as token ids (`/v1/completions` with a list of ints, as vLLM, SGLang and
llama.cpp take them), so the server sees exactly the tokens the chat format made and text
a user typed can never become a role token there; `prompt_format: text` sends the decoded
prompt instead, for servers that take only text (their tokenizer then decides what the
special-token strings in it become). Each DomainLM expert maps to an upstream model name:
vLLM lists LoRA modules as models whose `parent` is the base, which `discover` reads.

The client is the official `openai` library: it retries connection errors, 408, 429 and
5xx answers with backoff before a stream starts; a stream that breaks off, a timeout or
any other upstream error fails that request alone, with the upstream's reason.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from domainlm.engine.adapters import BASE
from domainlm.engine.generation import (
    Completion,
    Engine,
    Overloaded,
    Request,
    Stream,
    decode,
    stop_prefix,
)
from domainlm.errors import DomainLMError


@dataclass
class UpstreamStats:
    finished: int = 0
    cancelled: int = 0
    failed: int = 0


def discover(client: Any) -> tuple[str, list[str]]:
    """The base model and the LoRA modules a server lists (`GET /v1/models`): models
    with a `parent` are adapters of it, as vLLM lists `--lora-modules`."""
    try:
        models = list(client.models.list())
    except Exception as exc:  # the openai client raises its own errors and httpx's
        raise DomainLMError(f"upstream: cannot list models: {_reason(exc)}") from None
    # A DomainLM server upstream also lists assistant profiles: not adapters to call.
    models = [m for m in models if _extra(m, "domainlm").get("kind") != "profile"]
    bases = [m.id for m in models if not _parent(m)]
    if not bases:
        raise DomainLMError("upstream: the server lists no base model")
    return bases[0], [m.id for m in models if _parent(m) == bases[0]]


def _extra(model: Any, key: str) -> dict[str, Any]:
    value = getattr(model, key, None) or (getattr(model, "model_extra", None) or {}).get(key)
    return value if isinstance(value, dict) else {}


def _parent(model: Any) -> str | None:
    return getattr(model, "parent", None) or (getattr(model, "model_extra", None) or {}).get(
        "parent"
    )


class UpstreamEngine(Engine):
    """Requests to an OpenAI-compatible server, one stream each.

    Args:
        url: the server's base URL (`http://host:8000/v1`).
        tokenizer: the base model's tokenizer (prompts are token ids; lengths are checked).
        models: DomainLM expert name -> upstream model name (`base` for the base model);
            None: read from the server's model list (`discover`).
        api_key: the server's key, if it wants one.
        context: the model's context length, for the same check as the local engine.
        max_concurrency: requests sent at once; more wait, up to `max_queue`.
        prompt_format: `ids` (token ids) or `text` (the decoded prompt).
        timeout: seconds to wait for the server between two pieces of a stream.
        max_retries: retries (with backoff) of a request the server turned away.
    """

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        models: dict[str, str] | None = None,
        api_key: str | None = None,
        context: int = 0,
        max_concurrency: int = 32,
        max_queue: int = 256,
        prompt_format: str = "ids",
        timeout: float = 60.0,
        max_retries: int = 2,
        client: Any = None,
    ):
        from openai import OpenAI

        if prompt_format not in ("ids", "text"):
            raise DomainLMError(
                f"upstream: prompt_format must be ids or text, not {prompt_format!r}"
            )
        self.url = url
        self.tokenizer = tokenizer
        self.context = context
        self.prompt_format = prompt_format
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.client = client or OpenAI(
            base_url=url, api_key=api_key or "none", timeout=timeout, max_retries=max_retries
        )
        if models is None:
            base, experts = discover(self.client)
            models = {BASE: base, **{name: name for name in experts}}
        if BASE not in models:
            raise DomainLMError("upstream: models must name the upstream model for `base`")
        self.models = dict(models)
        self.stats = UpstreamStats()
        self._cond = threading.Condition()
        self._waiting: deque[Stream] = deque()
        self._active = 0
        self._closed = False

    # -- the interface the local engine has ---------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.models)

    def submit(self, request: Request) -> Stream:
        self.check(request)
        if request.expert not in self.models:
            raise DomainLMError(
                f"no expert {request.expert!r} upstream (loaded: {', '.join(self.models)})"
            )
        stream = Stream(request)
        with self._cond:
            if self._closed:
                raise DomainLMError("the engine is closed")
            if self._active >= self.max_concurrency:
                if len(self._waiting) >= self.max_queue:
                    raise Overloaded(
                        f"overloaded: {len(self._waiting)} requests are waiting; retry later"
                    )
                self._waiting.append(stream)
                return stream
            self._active += 1
        self._start(stream)
        return stream

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
        for stream in waiting:
            stream.fail(DomainLMError("the engine was closed before the request finished"))

    @property
    def load(self) -> dict[str, int]:
        return {"waiting": len(self._waiting), "prefilling": 0, "running": self._active}

    # -- one request --------------------------------------------------------------------
    def _start(self, stream: Stream) -> None:
        threading.Thread(target=self._serve, args=(stream,), daemon=True).start()

    def _serve(self, stream: Stream | None) -> None:
        """Serve `stream`, then the waiting ones, one after the other, in this thread."""
        while stream is not None:
            try:
                self._one(stream)
            except DomainLMError as exc:
                self.stats.failed += 1
                stream.fail(exc)
            except Exception as exc:  # the openai client's errors, httpx's, a broken stream
                self.stats.failed += 1
                stream.fail(DomainLMError(f"upstream: {_reason(exc)}"))
            with self._cond:
                stream = self._waiting.popleft() if self._waiting else None
                if stream is None:
                    self._active -= 1

    def _one(self, stream: Stream) -> None:
        request = stream.request
        if stream.cancelled:
            self._finish(stream, "", 0, "cancelled")
            return
        sampling = request.sampling
        budget = self.check(request)
        prompt: Any = request.prompt
        if self.prompt_format == "text":
            prompt = decode(self.tokenizer, request.prompt)
        extra: dict[str, Any] = {}
        if sampling.top_k:
            extra["top_k"] = sampling.top_k
        if sampling.repetition_penalty != 1.0:
            extra["repetition_penalty"] = sampling.repetition_penalty
        if sampling.ignore_eos:
            extra["ignore_eos"] = True
        kwargs: dict[str, Any] = {
            "model": self.models[request.expert],
            "prompt": prompt,
            "max_tokens": budget,
            "temperature": max(sampling.temperature, 0.0),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.temperature > 0 and sampling.top_p < 1.0:
            kwargs["top_p"] = sampling.top_p
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        if request.stop:
            kwargs["stop"] = request.stop[:4]  # OpenAI's limit; the rest are applied here
        if extra:
            kwargs["extra_body"] = extra
        response = self.client.completions.create(**kwargs)
        text, sent, reason, tokens = "", 0, None, None
        try:
            for chunk in response:
                if stream.cancelled:
                    self._finish(stream, text[:sent], tokens or 0, "cancelled")
                    return
                usage = getattr(chunk, "usage", None)
                if usage is not None and usage.completion_tokens is not None:
                    tokens = usage.completion_tokens
                for choice in chunk.choices or []:
                    if choice.text:
                        stream.token_times.append(time.perf_counter())
                        text += choice.text
                    reason = choice.finish_reason or reason
                cut = min((text.find(s) for s in request.stop if s and s in text), default=-1)
                if cut >= 0:  # a stop string the server did not apply
                    text, reason = text[:cut], "stop"
                    break
                ready = len(text) - stop_prefix(text, request.stop)
                if ready > sent:
                    stream.push(text[sent:ready])
                    sent = ready
        finally:
            response.close()
        if reason is None:
            raise DomainLMError(
                f"the stream ended without a finish reason after {len(text)} characters "
                "(the server dropped it)"
            )
        stream.push(text[sent:])
        count = tokens if tokens is not None else len(stream.token_times)
        self._finish(stream, text, count, "length" if reason == "length" else "stop")

    def _finish(self, stream: Stream, text: str, tokens: int, reason: str) -> None:
        if reason == "cancelled":
            self.stats.cancelled += 1
        else:
            self.stats.finished += 1
        stream.finish(Completion(text, tokens, reason, len(stream.request.prompt)))


def _reason(exc: BaseException) -> str:
    """One line: the upstream's status and message where it gave them."""
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    message = " ".join(str(message).split())
    return f"HTTP {status}: {message}" if status else f"{type(exc).__name__}: {message}"
