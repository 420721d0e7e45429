"""The OpenAI-compatible app: `create_app(runtime)` builds it (no module-level app).

Routes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` (404
without a dense model), `/health`, `/ready`, `/metrics`, `/admin/*` (admin keys), and the
web chat page at `/`. Every error is OpenAI's JSON shape; a failure inside one request is
a 500 with a generic message for that request only (the trace goes to the server log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response

from domainlm.chat.conversation import Conversation, FieldError, Message, ToolCall
from domainlm.chat.formats.chatglm3 import ChatGLM3Format
from domainlm.engine.adapters import BASE
from domainlm.engine.assistant import Session
from domainlm.engine.generation import Overloaded, Request, Sampling, Stream
from domainlm.errors import DomainLMError, ToolCallParseError
from domainlm.serve.api import APIError, ChatRequest, CompletionRequest, read_body
from domainlm.serve.ops import Caller, Keys, KillSwitch, Metrics, RateLimits
from domainlm.serve.runtime import BASE_ID, Runtime, within
from domainlm.serve.settings import Profile
from domainlm.serve.toolstream import CallSplitter, CallStreamer

log = logging.getLogger("domainlm.serve")
access = logging.getLogger("domainlm.access")


class Target:
    """What a request's `model` names: the base, an expert or a profile."""

    def __init__(self, model: str, expert: str, profile: Profile | None = None):
        self.model = model
        self.expert = expert
        self.profile = profile


class Server:
    """The app's state: the runtime, keys, limits, kill switch, metrics, requests in flight."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        settings = runtime.settings
        self.settings = settings
        self.keys = Keys(settings)
        self.limits = RateLimits(settings.limits.storage)
        self.switch = KillSwitch(settings.kill_switch.file, settings.kill_switch.message)
        self.metrics = Metrics(lambda: dict(getattr(runtime.engine, "load", {}) or {}))
        self.draining = False
        self.in_flight = 0
        self.lock = threading.Lock()

    # -- who and what ------------------------------------------------------------------
    def target(self, model: str, caller: Caller) -> Target:
        profile = self.runtime.profile(model)
        if model == BASE_ID:
            target = Target(model, BASE)
        elif profile is not None:
            target = Target(model, profile.expert, profile)
        elif model in self.runtime.experts():
            target = Target(model, model)
        else:
            known = ", ".join(self.model_ids())
            raise APIError(
                404,
                f"The model `{model}` does not exist (available: {known}).",
                param="model",
                code="model_not_found",
            )
        if not caller.may_use(model):
            raise APIError(
                403,
                f"Your key may not use the model `{model}`.",
                kind="permission_error",
                param="model",
                code="model_not_allowed",
            )
        off = self.switch.status(model)
        if off:
            raise APIError(503, off, kind="service_unavailable", code="switched_off")
        return target

    def model_ids(self) -> list[str]:
        return [BASE_ID, *self.runtime.experts(), *(p.name for p in self.settings.profiles)]

    def models(self) -> list[dict[str, Any]]:
        created = int(time.time())
        off = self.switch.models_off()

        def entry(model_id: str, parent: str | None, kind: str, **extra: Any) -> dict[str, Any]:
            info = {"kind": kind, **extra}
            if model_id in off:
                info["off"] = off[model_id]
            return {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "domainlm",
                "parent": parent,
                "root": self.settings.model if parent is None else parent,
                "domainlm": info,
            }

        data = [entry(BASE_ID, None, "base")]
        for name in self.runtime.experts():
            card = self.runtime.pool.card(name)
            description = card.description if card is not None else ""
            data.append(entry(name, BASE_ID, "expert", description=description))
        for profile in self.settings.profiles:
            parent = profile.expert if profile.expert not in ("auto", BASE) else BASE_ID
            data.append(
                entry(
                    profile.name, parent, "profile", description=profile.description,
                    expert=profile.expert, kb=profile.kb, tools=profile.tools,
                )
            )  # fmt: skip
        return data

    def sampling(self, body: Any, target: Target, limit: int | None) -> Sampling:
        cap = self.settings.limits.max_tokens
        if limit is not None and limit > cap:
            raise APIError(
                400,
                f"max_tokens is too large: {limit}. This server allows at most {cap}.",
                param="max_tokens",
                code="invalid_value",
            )
        profile = target.profile
        default_temperature = 1.0
        if profile is not None and profile.temperature is not None:
            default_temperature = profile.temperature
        sampling = Sampling(
            max_new_tokens=limit or (profile.max_tokens if profile and profile.max_tokens else cap),
            temperature=body.temperature if body.temperature is not None else default_temperature,
            top_p=body.top_p if body.top_p is not None else 1.0,
            top_k=body.top_k or 0,
            repetition_penalty=body.repetition_penalty or 1.0,
            seed=body.seed,
            ignore_eos=body.ignore_eos,
        )
        try:
            sampling.check()
        except DomainLMError as exc:
            raise APIError(400, str(exc), code="invalid_value") from None
        return sampling

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def submit(self, request: Request) -> Stream:
        try:
            return self.runtime.engine.submit(request)
        except Overloaded as exc:
            raise APIError(
                503, str(exc), kind="service_unavailable", code="overloaded",
                headers={"retry-after": "1"},
            ) from None  # fmt: skip
        except DomainLMError as exc:
            code = "context_length_exceeded" if "context" in str(exc) else "invalid_value"
            raise APIError(400, str(exc), code=code) from None


async def _counted(body: AsyncIterator[Any], server: Server) -> AsyncIterator[Any]:
    try:
        async for part in body:
            yield part
    finally:
        server.leave()


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, with a graceful first stop signal: new requests get 503 at once,
    those running (streams included) get `grace_s` to finish, then the server stops; a
    second signal stops it at once."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        app: Any = self.config.app
        state: Server = app.state.server
        if state.draining:
            super().handle_exit(sig, frame)
            return
        state.draining = True

        def stop_when_done() -> None:
            deadline = time.monotonic() + state.settings.grace_s
            while state.in_flight > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.should_exit = True

        threading.Thread(target=stop_when_done, daemon=True).start()


def create_app(runtime: Runtime) -> Any:
    """The FastAPI app serving `runtime` (it closes the runtime when it shuts down)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    server = Server(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        server.draining = True  # answered 503 from now on; those running may finish
        deadline = time.monotonic() + server.settings.grace_s
        while server.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        runtime.close()

    app = FastAPI(title="DomainLM", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    def error_response(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: HTTPRequest, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(
            APIError(400, f"Invalid request: {where} {first.get('msg', '')}".strip(), param=where)
        )

    @app.exception_handler(HTTPException)
    async def _http(request: HTTPRequest, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), kind=kind))

    @app.exception_handler(Exception)
    async def _crash(request: HTTPRequest, exc: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return error_response(
            APIError(500, "The server had an error processing your request.", "server_error")
        )

    @app.middleware("http")
    async def _guard(request: HTTPRequest, call_next: Any) -> Any:
        started = time.perf_counter()
        if server.draining and request.url.path not in ("/health", "/metrics"):
            return error_response(
                APIError(503, "The server is shutting down.", "service_unavailable", "draining")
            )
        length = request.headers.get("content-length")
        cap = server.settings.limits.max_body_bytes
        if length is not None and (not length.isdigit() or int(length) > cap):
            return error_response(
                APIError(413, f"Request body too large: at most {cap} bytes.", code="too_large")
            )
        server.enter()
        try:
            response = await call_next(request)
        except BaseException:
            server.leave()
            raise
        body = getattr(response, "body_iterator", None)
        if body is None:
            server.leave()
        else:  # a stream is in flight until its last chunk is sent (or the client goes)
            response.body_iterator = _counted(body, server)
        access.info(
            json.dumps(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "status": response.status_code,
                    "caller": getattr(request.state, "caller", None),
                    "model": getattr(request.state, "model", None),
                    "seconds": round(time.perf_counter() - started, 4),
                }
                | (
                    {"content": request.state.content}
                    if getattr(request.state, "content", None) is not None
                    else {}
                ),
                ensure_ascii=False,
            )
        )
        return response

    async def body_of(request: HTTPRequest) -> Any:
        cap = server.settings.limits.max_body_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise APIError(
                    413, f"Request body too large: at most {cap} bytes.", code="too_large"
                )
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"The request body is not valid JSON: {exc}") from None

    def caller_of(request: HTTPRequest) -> Caller:
        client = request.client.host if request.client else "unknown"
        caller = server.keys.caller(request.headers.get("authorization"), client)
        request.state.caller = caller.name
        return caller

    # -- service --------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        off = server.switch.status()
        if off:
            return error_response(APIError(503, off, "service_unavailable", "switched_off"))
        return {"status": "ready", "models": server.model_ids()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: HTTPRequest) -> dict[str, Any]:
        caller = caller_of(request)
        data = [m for m in server.models() if caller.may_use(m["id"])]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: HTTPRequest) -> dict[str, Any]:
        caller = caller_of(request)
        for entry in server.models():
            if entry["id"] == model_id and caller.may_use(model_id):
                return entry
        raise APIError(404, f"The model `{model_id}` does not exist.", code="model_not_found")

    @app.post("/v1/embeddings")
    async def embeddings(request: HTTPRequest) -> Any:
        caller = caller_of(request)
        kb = runtime.kb
        spec = kb.manifest.get("dense") if kb is not None else None
        if not spec:
            raise APIError(
                404,
                "No embedding model is configured: the knowledge base searches with BM25 "
                "only (build it with `kb build --dense …` to serve its encoder here).",
                kind="not_found_error",
                code="no_embedding_model",
            )
        data = await body_of(request)
        if not isinstance(data, dict) or set(data) - {"model", "input", "encoding_format", "user"}:
            raise APIError(400, 'Send {"model": …, "input": TEXT or [TEXT, …]}', param="input")
        texts = data.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if (
            not isinstance(texts, list)
            or not 1 <= len(texts) <= 256
            or not all(isinstance(t, str) and 0 < len(t) <= 8192 for t in texts)
        ):
            raise APIError(400, "input: 1-256 non-empty texts of at most 8192 characters", "input")
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise APIError(400, "encoding_format: float or base64", param="encoding_format")
        request.state.model = str(data.get("model"))
        if data.get("model") != spec:
            raise APIError(
                404, f"The embedding model here is `{spec}`.", param="model", code="model_not_found"
            )
        headers = server.limits.check(caller, sum(len(t) for t in texts))
        vectors = await asyncio.to_thread(kb.encoder.encode, texts)
        tokens = sum(len(runtime.engine.tokenizer(t)["input_ids"]) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "model": spec,
                "data": [
                    {"object": "embedding", "index": i, "embedding": _vector(v, encoding)}
                    for i, v in enumerate(vectors)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            headers=headers,
        )

    # -- chat ------------------------------------------------------------------------------
    def body_schema(model: Any) -> dict[str, Any]:
        """The request body in the OpenAPI document (the route reads the body itself, to
        cap its size and answer malformed JSON in OpenAI's shape)."""
        schema = _inline(model.model_json_schema())
        return {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
        }

    async def accepted(request: HTTPRequest, kind: Any) -> tuple[Caller, Any, Target]:
        """Who calls, the body read as `kind` (a 400 for what cannot be honoured), and
        the model it names (404, 403, or 503 when switched off)."""
        caller = caller_of(request)
        body = read_body(kind, await body_of(request))
        error = body.unsupported()
        if error is not None:
            raise error
        request.state.model = body.model
        return caller, body, server.target(body.model, caller)

    async def respond(reply: _Reply, body: Any, request: HTTPRequest, headers: Any) -> Any:
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(reply.chunks(request, include_usage), headers)
        return JSONResponse(await reply.whole(request), headers=headers)

    @app.post("/v1/chat/completions", openapi_extra=body_schema(ChatRequest))
    async def chat_completions(request: HTTPRequest) -> Any:
        caller, body, target = await accepted(request, ChatRequest)
        if server.settings.log_content:  # off by default: questions can be confidential
            request.state.content = json.dumps(body.messages[-1], ensure_ascii=False)[:2000]
        sampling = server.sampling(body, target, body.limit)
        if target.profile is not None:
            return await _profile_chat(server, request, caller, body, target, sampling)
        conversation, tools, forced = _conversation(server, body)
        prompt, prefix = _prompt(server, conversation, tools, forced)
        headers = server.limits.check(caller, len(prompt) + sampling.max_new_tokens)
        stops = list(runtime.format.stop_strings) + body.stops
        if prefix.startswith("<tool_call>"):
            stops.append("</tool_call>")
        stream = server.submit(Request(prompt, target.expert, sampling, stops))
        names = [t.name for t in tools]
        reply = _Reply(server, target.model, stream, prefix, names, len(prompt))
        return await respond(reply, body, request, headers)

    @app.post("/v1/completions", openapi_extra=body_schema(CompletionRequest))
    async def completions(request: HTTPRequest) -> Any:
        caller, body, target = await accepted(request, CompletionRequest)
        if target.profile is not None:
            raise APIError(
                400,
                f"`{body.model}` is an assistant profile: use /v1/chat/completions",
                param="model",
            )
        prompt: Any = body.prompt
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise APIError(400, "prompt: one prompt per request", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = runtime.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            vocab = len(runtime.engine.tokenizer)
            if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
            ids = list(prompt)
        sampling = server.sampling(body, target, body.max_tokens or 16)
        headers = server.limits.check(caller, len(ids) + sampling.max_new_tokens)
        stream = server.submit(Request(ids, target.expert, sampling, body.stops))
        reply = _Reply(server, target.model, stream, "", [], len(ids), text=True)
        return await respond(reply, body, request, headers)

    # -- admin -----------------------------------------------------------------------------
    def admin(request: HTTPRequest) -> Caller:
        caller = caller_of(request)
        if not server.keys.required:
            raise APIError(
                403, "Admin calls need keys: configure an admin key.", "permission_error"
            )
        if not caller.admin:
            raise APIError(403, "This key is not an admin key.", "permission_error")
        return caller

    @app.get("/admin/status")
    async def admin_status(request: HTTPRequest) -> dict[str, Any]:
        admin(request)
        return {
            "off": server.switch.status(),
            "models_off": server.switch.models_off(),
            "load": dict(getattr(runtime.engine, "load", {}) or {}),
            "models": server.model_ids(),
            "skipped_experts": dict(runtime.pool.skipped),
        }

    @app.post("/admin/switch")
    async def admin_switch(request: HTTPRequest) -> dict[str, Any]:
        admin(request)
        data = await body_of(request)
        if not isinstance(data, dict) or not isinstance(data.get("on"), bool):
            raise APIError(400, 'Send {"on": true|false, "model": NAME?, "message": TEXT?}')
        model, message = data.get("model"), data.get("message")
        if model is not None and model not in server.model_ids():
            raise APIError(404, f"The model `{model}` does not exist.", code="model_not_found")
        if message is not None and (not isinstance(message, str) or len(message) > 2000):
            raise APIError(400, "message: a string of at most 2000 characters", param="message")
        server.switch.set(data["on"], model, message)
        return {"off": server.switch.status(), "models_off": server.switch.models_off()}

    @app.post("/admin/experts")
    async def admin_add(request: HTTPRequest) -> dict[str, Any]:
        admin(request)
        data = await body_of(request)
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            raise APIError(400, 'Send {"path": FOLDER, "name": NAME?}', param="path")
        path = Path(data["path"])
        if not path.is_absolute():
            raise APIError(400, "path: give an absolute folder path", param="path")
        roots = runtime.settings.experts
        if not within(path, roots):
            raise APIError(
                403,
                f"{path} is outside the configured experts folders "
                f"({', '.join(str(r) for r in roots) or 'none'})",
                "permission_error",
            )
        name = data.get("name")
        try:
            card = await asyncio.to_thread(runtime.pool.add, path, name)
        except DomainLMError as exc:
            raise APIError(400, str(exc), param="path") from None
        return {"added": card.name, "models": server.model_ids()}

    @app.delete("/admin/experts/{name}")
    async def admin_remove(name: str, request: HTTPRequest) -> dict[str, Any]:
        admin(request)
        if any(p.expert == name for p in server.settings.profiles):
            raise APIError(409, f"profiles use the expert {name!r}: it stays", code="in_use")
        try:
            await asyncio.to_thread(runtime.pool.remove, name)
        except DomainLMError as exc:
            raise APIError(404, str(exc), code="model_not_found") from None
        return {"removed": name, "models": server.model_ids()}

    # -- the web page ----------------------------------------------------------------------
    @app.get("/web/config")
    async def web_config() -> dict[str, Any]:
        return {
            "keys_required": server.keys.required,
            "off": server.switch.status(),
            "models_off": server.switch.models_off(),
        }

    if runtime.settings.web:

        @app.get("/", response_class=HTMLResponse)
        async def page() -> HTMLResponse:
            html = resources.files("domainlm.serve").joinpath("web/index.html").read_text("utf-8")
            return HTMLResponse(html, headers={"cache-control": "no-cache"})

    return app


def _vector(vector: Any, encoding: str) -> Any:
    """One embedding as OpenAI sends it: floats, or base64 of little-endian float32."""
    if encoding == "base64":
        import base64

        import numpy as np

        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its `$defs` references written out (a self-contained schema)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


# -- plain models: the request's own conversation and client-side tools ---------------------
def _conversation(server: Server, body: ChatRequest) -> tuple[Conversation, list[Any], str | None]:
    """The conversation, the tools offered and the tool the reply must call (if forced)."""
    try:
        conversation = Conversation.from_record({"messages": body.messages, "tools": body.tools})
    except FieldError as exc:
        raise APIError(400, f"{exc.field}: {exc.message}", param=exc.field) from None
    messages = conversation.messages
    called: set[str] = set()
    for i, message in enumerate(messages):
        called |= {c.id for c in message.tool_calls if c.id}
        if message.role == "tool" and (
            i == 0
            or messages[i - 1].role not in ("assistant", "tool")
            or (message.tool_call_id is not None and message.tool_call_id not in called)
        ):
            raise APIError(
                400,
                f"messages[{i}]: a tool result must follow the assistant message whose "
                "tool_calls it answers (tool_call_id not found)",
                param=f"messages[{i}]",
            )
    tools = [t for t in conversation.tools if t.text is None]
    choice = body.tool_choice
    forced: str | None = None
    if choice is None or choice == "auto":
        pass
    elif choice == "none":
        tools = []
    elif choice == "required":
        if not tools:
            raise APIError(400, "tool_choice required: no tools given", param="tool_choice")
        forced = "" if len(tools) > 1 else tools[0].name
    elif isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or name not in {t.name for t in tools}:
            raise APIError(
                400, "tool_choice: name a function among the tools given", param="tool_choice"
            )
        forced = name
    else:
        raise APIError(400, "tool_choice: auto, none, required or a function", "tool_choice")
    conversation = conversation.model_copy(update={"tools": tools})
    return conversation, tools, forced


def _prompt(
    server: Server, conversation: Conversation, tools: list[Any], forced: str | None
) -> tuple[list[int], str]:
    """Prompt token ids, and the text the reply is made to start with (a forced call)."""
    runtime = server.runtime
    assert runtime.raw is not None
    if tools:
        conversation = runtime.raw.describe_tools(conversation)
    try:
        prompt = runtime.format.render_prompt(conversation)
    except DomainLMError as exc:
        raise APIError(400, str(exc), param="messages") from None
    prefix = ""
    if forced is not None:
        if isinstance(runtime.format, ChatGLM3Format):
            prefix = f"{forced}\n```python\ntool_call(" if forced else ""
        else:
            prefix = '<tool_call>{"name": "' + (f'{forced}", "arguments": {{' if forced else "")
        if prefix:
            prompt = (
                prompt + runtime.engine.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            )
    return prompt, prefix


class _Reply:
    """One generation's answer, whole or as chunks."""

    def __init__(
        self,
        server: Server,
        model: str,
        stream: Stream,
        prefix: str,
        tools: list[str],
        prompt_tokens: int,
        text: bool = False,
    ):
        self.server = server
        self.model = model
        self.stream = stream
        self.prefix = prefix
        self.tools = tools
        self.prompt_tokens = prompt_tokens
        self.text = text  # /v1/completions
        self.id = ("cmpl-" if text else "chatcmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.started = time.perf_counter()
        self.first: float | None = None

    def _message(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content and tool calls of the whole reply."""
        if not self.tools:
            return text, []
        full = self.prefix + text
        if self.prefix.startswith("<tool_call>") and "</tool_call>" not in full:
            full = full.rstrip() + "</tool_call>"
        fmt = self.server.runtime.format
        try:
            message = fmt.parse(full, self.tools)
        except ToolCallParseError:
            return text, []  # not a readable call: the client gets the text
        calls = [c for c in message.tool_calls if c.name in self.tools]
        if not calls:
            return text, []
        for call in calls:
            call.id = call.id or f"call_{uuid.uuid4().hex[:12]}"
        return message.content, calls

    def _finish(self, reason: str, calls: list[Any]) -> str:
        if calls:
            return "tool_calls"
        return "length" if reason == "length" else "stop"

    def _usage(self, tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": self.prompt_tokens + tokens,
        }

    def _record(self, status: str, tokens: int) -> None:
        metrics = self.server.metrics
        metrics.requests.labels(self.model, status).inc()
        metrics.tokens.labels(self.model, "prompt").inc(self.prompt_tokens)
        metrics.tokens.labels(self.model, "completion").inc(tokens)
        metrics.latency.labels(self.model).observe(time.perf_counter() - self.started)
        if self.first is not None:
            metrics.ttft.labels(self.model).observe(self.first - self.started)

    async def _pieces(self, request: Any) -> AsyncIterator[str]:
        """The stream's text; stops it when the client goes or the timeout passes."""
        deadline = self.started + self.server.settings.limits.timeout_s
        try:
            async for piece in self.stream:
                if self.first is None:
                    self.first = time.perf_counter()
                yield piece
                if time.perf_counter() > deadline:
                    raise APIError(
                        504,
                        f"The request took longer than {self.server.settings.limits.timeout_s:g}"
                        " s and was stopped.",
                        "timeout",
                        "timeout",
                    )
        finally:
            self.stream.cancel()

    async def whole(self, request: Any) -> dict[str, Any]:
        watch = asyncio.ensure_future(_watch_disconnect(request, self.stream))
        try:
            pieces = [piece async for piece in self._pieces(request)]
            completion = self.stream.result()
        except DomainLMError as exc:
            self._record("error", 0)
            raise APIError(500, f"generation failed: {exc}", "server_error") from None
        finally:
            watch.cancel()
        text = "".join(pieces)
        content, calls = self._message(text)
        reason = self._finish(completion.finish_reason, calls)
        self._record("ok", completion.tokens)
        usage = self._usage(completion.tokens)
        if self.text:
            choice: dict[str, Any] = {
                "index": 0, "text": text, "finish_reason": reason, "logprobs": None,
            }  # fmt: skip
            return {
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": [choice], "usage": usage,
            }  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = [c.to_openai() for c in calls]
        else:
            message["content"] = content
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model, "usage": usage,
            "choices": [{"index": 0, "message": message, "finish_reason": reason,
                         "logprobs": None}],
        }  # fmt: skip

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        if self.text:
            choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": reason,
                      "logprobs": None}  # fmt: skip
            kind = "text_completion"
        else:
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
            kind = "chat.completion.chunk"
        return {
            "id": self.id, "object": kind, "created": self.created, "model": self.model,
            "choices": [choice],
        }  # fmt: skip

    async def chunks(self, request: Any, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        # With tools offered, text that may be a call is held (see `toolstream`) and a
        # call is streamed as the model writes it; a forced call holds it all.
        splitter = CallSplitter(self.tools) if self.tools and not self.prefix else None
        streamer = CallStreamer(self.tools) if self.tools else None
        written = self.prefix  # a forced call: the reply so far, prefix included
        if not self.text:
            yield self._chunk({"role": "assistant", "content": ""})
        tokens = 0
        try:
            async for piece in self._pieces(request):
                if streamer is None:
                    yield self._chunk({"content": piece})
                    continue
                if splitter is not None:
                    out = splitter.feed(piece)
                    if out:
                        yield self._chunk({"content": out})
                    held = splitter.held if splitter.holding else ""
                else:
                    held = written = written + piece
                for index, arguments in streamer.feed(held) if held else []:
                    call = streamer.calls[index]
                    yield self._call_delta(index, call.id, call.name, arguments)
            completion = self.stream.result()
            tokens = completion.tokens
        except (APIError, DomainLMError) as exc:
            self._record("error", tokens)
            error = exc if isinstance(exc, APIError) else APIError(500, str(exc), "server_error")
            yield error.body()
            return
        calls: list[ToolCall] = []
        streamed = streamer.calls if streamer is not None else []
        if self.tools:
            content, calls = self._message(completion.text)
            sent = splitter.text[: splitter.sent].strip() if splitter is not None else ""
            if not calls and not streamed:
                held = splitter.held if splitter is not None else completion.text
                if held:
                    yield self._chunk({"content": held})
            elif calls:
                rest = content[len(sent) :] if content.startswith(sent) else ""
                if rest.strip() and not streamed:
                    yield self._chunk({"content": rest})
            _check_streamed(streamed, calls)
            for index, whole in enumerate(calls[len(streamed) :], len(streamed)):
                assert whole.id is not None  # `_message` gave every call one
                arguments = json.dumps(whole.arguments, ensure_ascii=False)
                for piece in ("", arguments):  # the head, then the arguments at once
                    yield self._call_delta(index, whole.id, whole.name, piece)
        self._record("ok", tokens)
        if streamed and not streamed[-1].complete:
            reason = "length"  # the arguments were cut off: what was sent is all there is
        else:
            reason = self._finish(completion.finish_reason, calls or streamed)
        yield self._chunk({}, reason)
        if include_usage:
            yield {**self._chunk({}), "choices": [], "usage": self._usage(tokens)}

    def _call_delta(self, index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
        """A call's first delta (id and name) when `arguments` is "", else a piece of its
        arguments."""
        if arguments:
            return self._chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}
            )
        head = {"index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}  # fmt: skip
        return self._chunk({"tool_calls": [head]})


def _check_streamed(streamed: list[Any], calls: list[ToolCall]) -> None:
    """Log a streamed call that the whole reply reads otherwise (it cannot be taken back:
    the client keeps what it was sent, as with any server that streams calls)."""
    for index, sent in enumerate(streamed):
        try:
            same = (
                index < len(calls)
                and calls[index].name == sent.name
                and json.loads(sent.arguments) == calls[index].arguments
            )
        except json.JSONDecodeError:
            same = False
        if not same:
            log.warning(
                "streamed tool call %d (%s) is not what the reply reads as", index, sent.name
            )


async def _watch_disconnect(request: Any, stream: Stream) -> None:
    """Cancel `stream` when the client of a non-streaming request goes away."""
    while not stream.done:
        if await request.is_disconnected():
            stream.cancel()
            return
        await asyncio.sleep(0.25)


def _sse(chunks: AsyncIterator[dict[str, Any]], headers: dict[str, str]) -> Any:
    from sse_starlette.sse import EventSourceResponse

    async def events() -> AsyncIterator[dict[str, str]]:
        async for chunk in chunks:
            yield {"data": json.dumps(chunk, ensure_ascii=False)}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), headers=headers, ping=15)


# -- profiles: the Assistant's loop (retrieval, server-side tools, citation checks) ----------
async def _profile_chat(
    server: Server, request: Any, caller: Caller, body: ChatRequest, target: Target,
    sampling: Sampling,
) -> Any:  # fmt: skip
    profile = target.profile
    assert profile is not None
    if body.tools:
        raise APIError(
            400,
            f"`{profile.name}` is an assistant profile that runs its own tools; call a model "
            "(base or an expert) to use client-side tools",
            param="tools",
        )
    try:
        conversation = Conversation.from_record({"messages": body.messages})
    except FieldError as exc:
        raise APIError(400, f"{exc.field}: {exc.message}", param=exc.field) from None
    messages = conversation.messages
    if messages[-1].role != "user" or not messages[-1].content.strip():
        raise APIError(400, "the last message must be a non-empty user message", "messages")
    session = Session(sampling=sampling, system=profile.system)
    for i, message in enumerate(messages[:-1]):
        if message.role == "system":
            session.system = message.content
        elif message.role in ("user", "assistant") and not message.tool_calls:
            session.messages.append(Message(role=message.role, content=message.content))
        else:
            raise APIError(
                400,
                f"messages[{i}]: a profile's conversation holds user and assistant text only",
                param=f"messages[{i}]",
            )
    assistant = server.runtime.assistants[profile.name]
    question = messages[-1].content
    estimate = len(server.runtime.engine.tokenizer(question)["input_ids"])
    headers = server.limits.check(caller, estimate + sampling.max_new_tokens)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    gone = threading.Event()
    started = time.perf_counter()
    first: list[float] = []

    def on_text(piece: str) -> None:
        if not first:
            first.append(time.perf_counter())
        loop.call_soon_threadsafe(queue.put_nowait, ("text", piece))

    def run() -> None:
        try:
            reply = assistant.reply(
                session, question, expert=target.expert, on_text=on_text, stop=gone
            )
            loop.call_soon_threadsafe(queue.put_nowait, ("done", reply))
        except Exception as exc:
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    worker = threading.Thread(target=run, daemon=True, name="profile")
    worker.start()
    chat_id = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    metrics = server.metrics
    deadline = started + server.settings.limits.timeout_s

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {
            "id": chat_id, "object": "chat.completion.chunk", "created": created,
            "model": profile.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
        }  # fmt: skip

    def usage() -> dict[str, int]:
        prompt, completion = session.usage["prompt_tokens"], session.usage["completion_tokens"]
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip

    def record(status: str) -> None:
        metrics.requests.labels(profile.name, status).inc()
        metrics.tokens.labels(profile.name, "prompt").inc(session.usage["prompt_tokens"])
        metrics.tokens.labels(profile.name, "completion").inc(session.usage["completion_tokens"])
        metrics.latency.labels(profile.name).observe(time.perf_counter() - started)
        if first:
            metrics.ttft.labels(profile.name).observe(first[0] - started)

    async def next_event() -> tuple[str, Any]:
        remaining = deadline - time.perf_counter()
        try:
            return await asyncio.wait_for(queue.get(), timeout=max(0.01, remaining))
        except TimeoutError:
            gone.set()
            return "error", APIError(504, "The request took too long and was stopped.", "timeout")

    def failure(exc: BaseException) -> APIError:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, Overloaded):
            return APIError(503, str(exc), "service_unavailable", "overloaded")
        if isinstance(exc, DomainLMError):
            return APIError(400, str(exc))
        log.error("profile %s failed: %r", profile.name, exc)
        return APIError(500, "The server had an error processing your request.", "server_error")

    def extension(reply: Any) -> dict[str, Any]:
        data = reply.to_dict()
        data.pop("text", None)
        return data

    if not body.stream:
        watch = asyncio.ensure_future(_watch_event(request, gone))
        try:
            while True:
                kind, value = await next_event()
                if kind == "text":
                    continue
                if kind == "error":
                    record("error")
                    raise failure(value)
                reply = value
                break
        finally:
            watch.cancel()
        record("ok")
        return JSONResponse(
            {
                "id": chat_id, "object": "chat.completion", "created": created,
                "model": profile.name, "usage": usage(),
                "choices": [{"index": 0, "finish_reason": session.finish_reason, "logprobs": None,
                             "message": {"role": "assistant", "content": reply.text}}],
                "domainlm": extension(reply),
            },
            headers=headers,
        )  # fmt: skip

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"role": "assistant", "content": ""})
        sent = False
        try:
            while True:
                kind, value = await next_event()
                if kind == "text":
                    sent = True
                    yield chunk({"content": value})
                    continue
                if kind == "error":
                    record("error")
                    yield failure(value).body()
                    return
                reply = value
                break
            if not sent and reply.text:
                yield chunk({"content": reply.text})
            record("ok")
            yield chunk({}, session.finish_reason)
            yield {**chunk({}), "choices": [], "domainlm": extension(reply)}
            if include_usage:
                yield {**chunk({}), "choices": [], "usage": usage()}
        finally:
            gone.set()  # a client gone: the Assistant stops at its next token, in any step

    return _sse(chunks(), headers)


async def _watch_event(request: Any, gone: threading.Event) -> None:
    while not gone.is_set():
        if await request.is_disconnected():
            gone.set()
            return
        await asyncio.sleep(0.25)
