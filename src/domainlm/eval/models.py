"""The models a suite is run on: the local base and its experts, or an OpenAI endpoint.

Both answer `generate` (a chat, greedy, per item: a text or the item's own error);
local models also answer `loglik` (the log-probability of each continuation of a prompt).

Local generation goes through the engine, so the items of every model in the run share
its batches (mixed experts in one step). Log-likelihoods are computed in batched forward
passes of rows that may belong to different experts (the pool's batched LoRA); a prompt
whose continuations are single tokens (exam letters) costs one row, not one per option,
and rows sharing a prefix (the few-shot examples) have it computed once per expert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from domainlm.errors import DomainLMError

BASE_NAME = "base"


@dataclass
class Chat:
    model: str
    messages: list[dict[str, Any]]
    max_new_tokens: int
    tools: list[dict[str, Any]] | None = None  # OpenAI tool specs offered to the model


@dataclass
class Reply:
    text: str
    calls: list[dict[str, Any]] = field(default_factory=list)  # [{name, arguments: dict}]


@dataclass
class Choice:
    model: str
    context: str
    continuations: list[str]


class Models(Protocol):
    names: list[str]

    def generate(self, jobs: list[Chat]) -> Iterator[tuple[int, Reply | Exception]]:
        """(index into jobs, reply or error), in the order they finish."""
        ...

    def loglik(self, jobs: list[Choice]) -> list[list[float]]: ...

    def assist(
        self, jobs: list[Chat], toolsets: list[str]
    ) -> Iterator[tuple[int, Reply | Exception]]:
        """Answers with DomainLM's toolsets run for the model (its tool loop)."""
        ...

    def describe(self) -> dict[str, Any]: ...


class LocalModels:
    """The base (`base`) and the experts of an AdapterPool."""

    def __init__(self, pool: Any, chat_format: Any, engine: Any = None, batch_rows: int = 16):
        from domainlm.engine.local import LocalEngine

        self.pool = pool
        self.format = chat_format
        self.engine = engine or LocalEngine(pool)
        self._owns_engine = engine is None
        self.batch_rows = batch_rows
        self.names = [BASE_NAME, *pool.cards]
        self._assistant: Any = None  # describes tools to templates without tool syntax

    def describe(self) -> dict[str, Any]:
        base = self.pool.base
        return {
            "backend": "local",
            "base": base.model_id,
            "content_hash": base.content_hash,
            "experts": list(self.pool.cards),
        }

    def close(self) -> None:
        if self._owns_engine:
            self.engine.close()

    def _render(self, job: Chat) -> tuple[Any, list[str]]:
        """The prompt of a job and the names of the tools it offers."""
        from domainlm.chat.conversation import Conversation
        from domainlm.engine.assistant import Assistant

        conversation = Conversation.from_record({"messages": job.messages, "tools": job.tools})
        if job.tools:
            if self._assistant is None:
                self._assistant = Assistant(self.pool, self.format, engine=self.engine)
            conversation = self._assistant.describe_tools(conversation)
        return self.format.render_prompt(conversation), [t.name for t in conversation.tools]

    def _reply(self, text: str, tools: list[str]) -> Reply:
        if not tools:
            return Reply(text)
        try:
            message = self.format.parse(text, tools)
        except DomainLMError:
            return Reply(text)  # a call that cannot be read is no call
        calls = [{"name": c.name, "arguments": c.arguments} for c in message.tool_calls]
        if not calls:
            return Reply(text)
        return Reply(message.content, calls)

    def generate(self, jobs: list[Chat]) -> Iterator[tuple[int, Reply | Exception]]:
        import queue

        from domainlm.engine.adapters import BASE
        from domainlm.engine.generation import Request, Sampling

        window = 4 * getattr(self.engine, "max_rows", 16)  # queued ahead of the batch
        pending: dict[int, Any] = {}
        offered: dict[int, list[str]] = {}
        finished: queue.SimpleQueue[int] = queue.SimpleQueue()
        position = 0
        try:
            while position < len(jobs) or pending:
                while position < len(jobs) and len(pending) < window:
                    job = jobs[position]
                    try:
                        prompt, offered[position] = self._render(job)
                        expert = BASE if job.model == BASE_NAME else job.model
                        sampling = Sampling(max_new_tokens=job.max_new_tokens)
                        request = Request(prompt, expert, sampling, self.format.stop_strings)
                        stream = self.engine.submit(request)
                        pending[position] = stream
                        stream.when_done(lambda i=position: finished.put(i))
                        if stream.done:
                            finished.put(position)  # it ended before the callback was set
                    except DomainLMError as exc:
                        yield position, exc
                    position += 1
                if not pending:
                    continue
                index = finished.get()
                if index not in pending:
                    continue  # told twice
                stream = pending.pop(index)
                try:
                    yield index, self._reply(stream.result().text, offered.pop(index))
                except DomainLMError as exc:
                    yield index, exc
        finally:  # Ctrl-C or a caller that stops reading: nothing keeps generating
            for stream in pending.values():
                stream.cancel()

    def loglik(self, jobs: list[Choice]) -> list[list[float]]:
        from domainlm.eval.loglik import score_choices

        return score_choices(self.pool, jobs, self.batch_rows)

    def assist(
        self, jobs: list[Chat], toolsets: list[str], workers: int = 8
    ) -> Iterator[tuple[int, Reply | Exception]]:
        """The Assistant's tool loop per job, `workers` at once (the engine batches their
        steps); a reply's calls are the tools it ran, with their arguments."""
        from domainlm.engine.assistant import Assistant, Session
        from domainlm.engine.generation import Sampling
        from domainlm.engine.setup import make_toolset

        # One Assistant for every job (as a server shares one between requests): what
        # differs per job is in its Session.
        assistant = Assistant(
            self.pool, self.format, toolset=make_toolset(toolsets), engine=self.engine
        )

        def one(index: int) -> tuple[int, Reply | Exception]:
            job = jobs[index]
            system = next((m["content"] for m in job.messages if m["role"] == "system"), None)
            session = Session(system=system, sampling=Sampling(max_new_tokens=job.max_new_tokens))
            try:
                reply = assistant.reply(
                    session, job.messages[-1]["content"],
                    expert=None if job.model == BASE_NAME else job.model, use_kb=False,
                )  # fmt: skip
            except DomainLMError as exc:
                return index, exc
            calls = [{"name": o.name, "arguments": o.arguments} for o in reply.tool_trace]
            return index, Reply(reply.text, calls)

        with ThreadPoolExecutor(workers) as pool:
            yield from _as_completed(pool, one, len(jobs))


class EndpointModels:
    """Models behind an OpenAI-compatible endpoint (`domainlm serve`, vLLM, a hosted API)."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        names: list[str],
        concurrency: int = 8,
        retries: int = 3,
    ):
        import openai

        self.url = url
        # The openai client retries 429, 5xx and dropped connections with backoff.
        self.client = openai.OpenAI(
            base_url=url, api_key=api_key or "none", max_retries=retries, timeout=120
        )
        self.names = names
        self.concurrency = concurrency

    def describe(self) -> dict[str, Any]:
        return {"backend": "endpoint", "url": self.url}

    def check(self) -> None:
        """The endpoint answers and serves the models asked for."""
        import openai

        try:
            served = {m.id for m in self.client.models.list()}
        except openai.APIConnectionError:
            raise DomainLMError(
                f"endpoint {self.url}: cannot connect (is the server running?)"
            ) from None
        except openai.APIError as exc:
            raise DomainLMError(f"endpoint {self.url}: {error_reason(exc)}") from None
        except Exception as exc:  # connection refused, bad URL
            raise DomainLMError(f"endpoint {self.url}: cannot connect ({exc})") from None
        missing = [n for n in self.names if n not in served]
        if missing and served:
            raise DomainLMError(
                f"endpoint {self.url} does not serve {', '.join(missing)} "
                f"(it serves {', '.join(sorted(served))})"
            )

    def close(self) -> None:
        self.client.close()

    def generate(self, jobs: list[Chat]) -> Iterator[tuple[int, Reply | Exception]]:
        def one(index: int) -> tuple[int, Reply | Exception]:
            job = jobs[index]
            try:
                extra: dict[str, Any] = {"tools": job.tools} if job.tools else {}
                reply = self.client.chat.completions.create(
                    model=job.model,
                    messages=job.messages,  # type: ignore[arg-type]
                    max_tokens=job.max_new_tokens,
                    temperature=0,
                    **extra,
                )
                if not reply.choices:
                    return index, Reply("")
                message = reply.choices[0].message
                calls = [_call(c) for c in message.tool_calls or []]
                return index, Reply(message.content or "", calls)
            except Exception as exc:  # the item's own error, recorded; the run goes on
                return index, DomainLMError(f"endpoint: {error_reason(exc)}")

        with ThreadPoolExecutor(self.concurrency) as pool:
            yield from _as_completed(pool, one, len(jobs))

    def assist(
        self, jobs: list[Chat], toolsets: list[str]
    ) -> Iterator[tuple[int, Reply | Exception]]:
        for index in range(len(jobs)):
            yield (
                index,
                DomainLMError(
                    "tools: DomainLM's toolsets run with local models; an endpoint answers "
                    "without them"
                ),
            )

    def loglik(self, jobs: list[Choice]) -> list[list[float]]:
        raise DomainLMError(
            "the loglik scorer needs local models (an endpoint gives no prompt "
            "log-probabilities); use `scorers: [generate]` for endpoints"
        )


def _as_completed(
    pool: ThreadPoolExecutor, work: Callable[[int], tuple[int, Any]], count: int
) -> Iterator[tuple[int, Any]]:
    from concurrent.futures import as_completed

    futures = [pool.submit(work, i) for i in range(count)]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        for future in futures:
            future.cancel()


def _call(call: Any) -> dict[str, Any]:
    """An OpenAI tool call as {name, arguments}; arguments that are not a JSON object are
    kept as text under `_raw` (they score as wrong, not as an error)."""
    import json

    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = {"_raw": call.function.arguments}
    if not isinstance(arguments, dict):
        arguments = {"_raw": call.function.arguments}
    return {"name": call.function.name, "arguments": arguments}


def error_reason(exc: Exception) -> str:
    """An endpoint error in one line: its HTTP status and message where it gave them."""
    message = getattr(exc, "message", None) or str(exc)
    status = getattr(exc, "status_code", None)
    return f"{status} {message}" if status else message
