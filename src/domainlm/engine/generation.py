"""What callers hand the engine and get back: a Request (prompt ids, expert, sampling, stop
strings), a Stream per request (text pieces as they become final, then a Completion), and
the text rules every engine backend follows.

Text never holds a partial character: a token can end inside a character's UTF-8 bytes, so
streamed text waits for the character's last byte, and a reply cut off by the token limit
(or ended by the model) inside a character drops it. Text that may be the start of a stop
string waits until the next token says whether it is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from domainlm.engine.adapters import BASE
from domainlm.errors import DomainLMError


@dataclass(frozen=True)
class Sampling:
    """Decoding settings (temperature 0 = greedy); each request carries its own."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    #: Generate `max_new_tokens` whatever the model says (benchmarks: equal work for all).
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def check(self) -> None:
        """Raise DomainLMError for settings no sampler can use."""
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be 0 or more (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more (got {self.top_k})")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            problems.append(
                f"repetition_penalty must be more than 0 (got {self.repetition_penalty})"
            )
        if problems:
            raise DomainLMError("; ".join(problems))


@dataclass
class Request:
    """One prompt (token ids) for one expert."""

    prompt: list[int]
    expert: str = BASE
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    tokens: int  # generated tokens (EOS included when the model wrote one)
    finish_reason: str  # "stop" (EOS or a stop string), "length" or "cancelled"
    prompt_tokens: int = 0


class Overloaded(DomainLMError):
    """The engine's queue is full: retry later (a server answers 429/503)."""


class Cancelled(DomainLMError):
    """The request was cancelled before it finished."""


#: What tokenizers decode an incomplete UTF-8 sequence to.
REPLACEMENT = "\ufffd"


def decode(tokenizer: Any, ids: list[int]) -> str:
    """`ids` as text, less a trailing incomplete character (its first bytes decode to one
    U+FFFD; a model that writes U+FFFD itself as its very last character loses it)."""
    text: str = tokenizer.decode(ids, skip_special_tokens=False)
    return text[:-1] if text.endswith(REPLACEMENT) else text


def stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the start of one of `stops`."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextTracker:
    """The reply of one request as its tokens arrive: what may be shown, where it stops.

    Decoding is incremental, as vLLM's detokenizer does it: the new text is what decoding
    from a few tokens back gives beyond what the same start gave before, so a token costs
    the same at the end of a long reply as at its start, and a piece decoded alone never
    differs from its place in the whole (SentencePiece's leading spaces). A token that ends
    inside a character adds nothing until the character is complete. Only the tail after
    the last character shown is searched for stop strings.
    """

    def __init__(self, tokenizer: Any, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters handed out so far
        self.stopped = False
        self._prefix = 0  # decoding starts here ...
        self._read = 0  # ... and the text of ids[_prefix:_read] is already in `text`

    def add(self, token: int) -> str:
        """Take one generated token; returns the text that became final (maybe empty).
        After a stop string, `stopped` is set and `text` ends before it."""
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=False)
        now = decode(self.ids[self._prefix :], skip_special_tokens=False)
        if len(now) <= len(before) or now.endswith(REPLACEMENT):
            return ""  # inside a character
        text = self.text + now[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        if self.stops:
            start = max(0, self.sent - max(len(s) for s in self.stops))
            cuts = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
            if cuts:
                self.text, self.stopped = text[: min(cuts)], True
                return self._take(len(self.text))
            self.text = text
            return self._take(len(text) - stop_prefix(text, self.stops))
        self.text = text
        return self._take(len(text))

    def finish(self) -> str:
        """The rest of the text once the reply has ended (no more tokens)."""
        return self._take(len(self.text))

    def _take(self, ready: int) -> str:
        if ready <= self.sent:
            return ""
        piece = self.text[self.sent : ready]
        self.sent = ready
        return piece


class Stream:
    """One request's output: text pieces as they become final, then its Completion.

    Iterate it (blocking: `for piece in stream`) or `async for piece in stream`; `result()`
    waits for the Completion. `cancel()` (or closing the iterator `Engine.stream` returns)
    frees the request's place at the engine's next step. An error of this request alone is
    raised to its reader; other requests go on.
    """

    def __init__(self, request: Request):
        self.request = request
        self._cond = threading.Condition()
        self._pieces: deque[str] = deque()
        self._completion: Completion | None = None
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_done: list[Any] = []  # called once when the request ends, however it ends
        #: When each token was generated (`time.perf_counter()`): time to first token and
        #: inter-token latency for metrics.
        self.token_times: list[float] = []

    # -- the engine's side ----------------------------------------------------------------
    def push(self, piece: str) -> None:
        if piece:
            with self._cond:
                self._pieces.append(piece)
                self._wake()

    def finish(self, completion: Completion) -> None:
        self._end(completion, None)

    def fail(self, error: BaseException) -> None:
        self._end(None, error)

    def when_done(self, callback: Any) -> None:
        """Call `callback()` once the request has ended (finished, failed or cancelled)."""
        self._on_done.append(callback)

    def _end(self, completion: Completion | None, error: BaseException | None) -> None:
        """The request's one ending (a later finish or fail is ignored)."""
        with self._cond:
            if self.done:
                return
            self._completion, self._error = completion, error
            self._wake()
        callbacks, self._on_done = self._on_done, []
        for callback in callbacks:
            callback()

    def _wake(self) -> None:
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a reader's loop closed: none to wake
                loop.call_soon_threadsafe(event.set)

    # -- the caller's side ----------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._completion is not None or self._error is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop the request at the engine's next step (its Completion says `cancelled`)."""
        self._cancelled.set()

    def result(self, timeout: float | None = None) -> Completion:
        """The Completion, once the request has finished (raises its error, if any)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError("no completion yet")
            if self._error is not None:
                raise self._error
            assert self._completion is not None
            return self._completion

    def __iter__(self) -> Iterator[str]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pieces or self.done)
                if self._pieces:
                    piece = self._pieces.popleft()
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield piece

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces_async()

    async def _pieces_async(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._pieces:
                    piece: str | None = self._pieces.popleft()
                elif self._error is not None:
                    raise self._error
                elif self._completion is not None:
                    return
                else:
                    piece = None
                    event = asyncio.Event()
                    waiter = (loop, event)
                    self._waiters.append(waiter)
            if piece is None:
                try:
                    await event.wait()
                finally:  # a reader cancelled here leaves no waiter behind
                    with self._cond:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
            else:
                yield piece


class Engine:
    """What every engine backend offers (`LocalEngine`, `UpstreamEngine`): callers submit
    Requests and read Streams, whichever generates the tokens. A backend implements
    `submit` and `close`; the rest is built on them here."""

    tokenizer: Any
    context: int = 0

    def submit(self, request: Request) -> Stream:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def check_length(self, request: Request) -> None:
        if self.context and len(request.prompt) + 1 > self.context:
            raise DomainLMError(
                f"prompt of {len(request.prompt)} tokens exceeds the model's context of "
                f"{self.context} tokens (shorten the conversation or retrieve fewer articles)"
            )

    def check(self, request: Request) -> int:
        """Raise DomainLMError for a request no backend can run; returns its token budget
        (its max_new_tokens, within the context)."""
        if not request.prompt:
            raise DomainLMError("empty prompt")
        request.sampling.check()
        self.check_length(request)
        budget = request.sampling.max_new_tokens
        if self.context:
            budget = max(1, min(budget, self.context - len(request.prompt)))
        return budget

    def submit_all(self, requests: list[Request]) -> list[Stream]:
        """`submit` each of `requests` (a backend may queue them at once)."""
        streams: list[Stream] = []
        try:
            for request in requests:
                streams.append(self.submit(request))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    def run(self, requests: list[Request]) -> list[Completion]:
        """Completions for `requests`, in order (they run together)."""
        streams = self.submit_all(requests)
        try:
            return [s.result() for s in streams]
        finally:
            for stream in streams:
                stream.cancel()  # only those not finished: a caller interrupted

    def stream(self, request: Request) -> Iterator[str]:
        """Text pieces of `request` as they become final. Closing the iterator (as a
        caller does when Ctrl-C interrupts it) cancels the request."""
        stream = self.submit(request)
        try:
            yield from stream
        finally:
            stream.cancel()

    async def astream(self, request: Request) -> AsyncIterator[str]:
        """`stream` for asyncio callers (a client that disconnects cancels the request)."""
        stream = self.submit(request)
        try:
            async for piece in stream:
                yield piece
        finally:
            stream.cancel()
