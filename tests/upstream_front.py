"""A minimal OpenAI-compatible server over DomainLM's local engine, on 127.0.0.1, for the
upstream backend's tests: `/v1/models` lists the base and its experts as vLLM lists LoRA
modules (`parent` = the base), `/v1/completions` takes token-id or text prompts and
streams SSE chunks like vLLM's. `faults` makes it misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from domainlm.engine.adapters import BASE
from domainlm.engine.generation import Request, Sampling
from domainlm.engine.local import LocalEngine

BASE_ID = "tiny-base"


def make_app(engine: LocalEngine, faults: dict[str, Any]) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        names = [n for n in engine.pool.names if n != BASE]
        data: list[dict[str, Any]] = [{"id": BASE_ID, "object": "model", "parent": None}]
        data += [{"id": n, "object": "model", "parent": BASE_ID} for n in names]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> Any:
        faults["requests"] = faults.get("requests", 0) + 1
        faults.setdefault("bodies", []).append(body)
        for status in (429, 500):
            if faults.get(f"{status}_times", 0) > 0:
                faults[f"{status}_times"] -= 1
                return JSONResponse({"error": {"message": f"fault {status}"}}, status)
        if faults.get("stall"):
            await asyncio.sleep(faults["stall"])
        model = body["model"]
        expert = BASE if model == BASE_ID else model
        prompt = body["prompt"]
        if isinstance(prompt, str):
            prompt = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sampling = Sampling(
            max_new_tokens=body.get("max_tokens", 16),
            temperature=body.get("temperature", 1.0),
            top_p=body.get("top_p", 1.0),
            top_k=body.get("top_k", 0),
            repetition_penalty=body.get("repetition_penalty", 1.0),
            seed=body.get("seed"),
            ignore_eos=body.get("ignore_eos", False),
        )
        stop = body.get("stop") or []
        stops = [stop] if isinstance(stop, str) else stop
        stream = engine.submit(Request(prompt, expert, sampling, stops))

        def chunk(text: str, reason: str | None, usage: Any = None) -> str:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
            data: dict[str, Any] = {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": model,
                "choices": [choice],
            }
            if usage is not None:
                data = {**data, "choices": [], "usage": usage}
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            sent = 0
            try:
                async for piece in stream:
                    sent += 1
                    if faults.get("drop_after") is not None and sent > faults["drop_after"]:
                        return  # the connection ends without a finish reason
                    yield chunk(piece, None)
                completion = stream.result()
                reason = "length" if completion.finish_reason == "length" else "stop"
                yield chunk("", reason)
                usage = {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": completion.tokens,
                    "total_tokens": len(prompt) + completion.tokens,
                }
                yield chunk("", None, usage)
                yield "data: [DONE]\n\n"
            finally:
                stream.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def on_loopback(app: Any, server_class: Any = None) -> Iterator[tuple[str, Any, threading.Thread]]:
    """`app` served by a real uvicorn server (or `server_class`) on 127.0.0.1 for the body
    of the block; yields its base URL, the server and the thread running it."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = (server_class or uvicorn.Server)(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serving(engine: LocalEngine, faults: dict[str, Any]) -> Iterator[str]:
    """The front on 127.0.0.1 for the body of the block; yields its `/v1` URL."""
    with on_loopback(make_app(engine, faults)) as (url, _, _):
        yield url + "/v1"
