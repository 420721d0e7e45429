"""A DomainLM server on 127.0.0.1 (real uvicorn) for the serve tests, and a scripted engine
that answers with given texts, so that tool calls and citations are tested without a model
that writes them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from domainlm.engine.generation import Completion, Engine, Request, Stream
from domainlm.serve.app import create_app
from domainlm.serve.runtime import Runtime
from tests.upstream_front import on_loopback


class ScriptedEngine(Engine):
    """Answers each request with the next scripted text, two characters a step (`delay`
    seconds apart), and stops when the request is cancelled."""

    def __init__(self, tokenizer: Any, replies: list[str] | None = None, delay: float = 0.0):
        self.tokenizer = tokenizer
        self.context = 0
        self.replies = list(replies or [])
        self.delay = delay
        self.requests: list[Request] = []
        self.streams: list[Stream] = []

    @property
    def load(self) -> dict[str, int]:
        return {"waiting": 0, "running": sum(not s.done for s in self.streams)}

    def submit(self, request: Request) -> Stream:
        self.check(request)
        reply = self.replies.pop(0) if self.replies else "ok"
        stream = Stream(request)
        self.requests.append(request)
        self.streams.append(stream)
        threading.Thread(target=self._run, args=(stream, reply), daemon=True).start()
        return stream

    def _run(self, stream: Stream, reply: str) -> None:
        pieces = [reply[i : i + 2] for i in range(0, len(reply), 2)]
        for piece in pieces:
            if stream.cancelled:
                stream.finish(Completion("", 0, "cancelled", len(stream.request.prompt)))
                return
            if self.delay:
                time.sleep(self.delay)
            stream.push(piece)
        stream.finish(Completion(reply, len(pieces), "stop", len(stream.request.prompt)))

    def close(self) -> None:
        for stream in self.streams:
            stream.cancel()


@contextmanager
def serving(runtime: Runtime) -> Iterator[tuple[str, Any]]:
    """`create_app(runtime)` served on 127.0.0.1 for the block; yields (base URL, app)."""
    app = create_app(runtime)
    with on_loopback(app) as (url, _, _):
        yield url, app
