"""The local engine: continuous batching of requests for mixed experts on one base model.

Every caller (`ask`, `chat`, the Assistant's tool loop, training samples, the server)
submits Requests and reads a Stream per request. One worker thread runs the model, step by
step (iteration-level scheduling, as vLLM and transformers' `generate_batch` do):

1. newcomers are taken from a bounded FIFO queue while the limits allow (running rows,
   and KV-cache memory reserved for each row's prompt and longest reply);
2. up to `prefill_chunk` prompt tokens of newcomers are prefilled (a long prompt takes
   several steps, so the rows already decoding wait one chunk, not the whole prompt); a
   prompt that is complete gets its first token at once and joins the running batch;
3. every running row decodes one token in one forward pass: each row with its own expert
   (DomainLM's batched LoRA, or peft's `adapter_names` for adapters it does not cover),
   its own sampling settings (`engine.sampler`) and stop strings, and the rows that
   finish leave the batch at once.

Cancelled requests (a caller that went away) leave at the next step; a request's own
error (unknown expert, a prompt longer than the context, too big for the KV limit) is
raised when it is submitted, and the batch goes on. The KV cache is one left-padded row per
request (`engine.kvcache`).
"""

from __future__ import annotations

import atexit
import inspect
import threading
import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from domainlm.engine import attention
from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.generation import (
    Completion,
    Engine,
    Overloaded,
    Request,
    Stream,
    TextTracker,
)
from domainlm.engine.kvcache import RowCache
from domainlm.engine.sampler import RowRandom, next_tokens
from domainlm.errors import DomainLMError

#: Default KV-cache limit on CPU; on CUDA, 30% of the memory free when the engine starts
#: (admitting or retiring a row copies the batch's cache once, so the peak is twice it).
CPU_KV_BYTES = 4 << 30


@dataclass
class EngineStats:
    """Counters since the engine started (for metrics and benchmarks)."""

    steps: int = 0  # decode forward passes
    decode_tokens: int = 0
    prefill_tokens: int = 0
    prefill_passes: int = 0
    finished: int = 0
    cancelled: int = 0
    decode_seconds: float = 0.0  # in decode steps (forward pass and sampling)
    prefill_seconds: float = 0.0
    rows_seen: Counter[int] = field(default_factory=Counter)  # decode steps by running rows


@dataclass(eq=False)
class _Row:
    """A request inside the engine."""

    stream: Stream
    expert: str
    budget: int  # most new tokens (the request's limit, within the context)
    text: TextTracker
    random: RowRandom | None
    cache: RowCache | None = None  # its own, while its prompt is prefilled
    prefilled: int = 0
    tokens: int = 0
    last: int = -1
    history: list[int] = field(default_factory=list)  # for the repetition penalty

    @property
    def request(self) -> Request:
        return self.stream.request

    @property
    def reserved(self) -> int:
        """KV columns the row may need: its prompt and its longest reply."""
        return len(self.request.prompt) + self.budget


class LocalEngine(Engine):
    """Continuous batching over an AdapterPool's model (see the module docstring).

    Args:
        pool: the base model and its experts.
        max_rows: most requests decoding at once.
        max_queue: most requests waiting; past it `submit` raises Overloaded.
        max_kv_bytes: KV-cache memory the running rows may reserve (their prompts and
            longest replies, padded to the longest row); None for the device's default.
        prefill_chunk: most prompt tokens prefilled per step.
    """

    def __init__(
        self,
        pool: AdapterPool,
        max_rows: int = 32,
        max_queue: int = 256,
        max_kv_bytes: int | None = None,
        prefill_chunk: int = 512,
    ):
        if min(max_rows, max_queue, prefill_chunk) < 1:
            raise DomainLMError("engine: max_rows, max_queue and prefill_chunk must be at least 1")
        self.pool = pool
        self.tokenizer = pool.base.tokenizer
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        model = pool.base.model
        config = model.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.device = next(model.parameters()).device
        self.token_bytes = _kv_bytes_per_token(config, next(model.parameters()).dtype)
        self.max_kv_bytes = max_kv_bytes or _default_kv_bytes(self.device)
        self.eos = _eos_ids(self.tokenizer, model)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        # Decode steps on CPU run `engine.attention` (grouped queries, no KV copies) where
        # the model allows; prefill keeps the model's own attention (long chunks).
        self._config = config
        self._dtype = next(model.parameters()).dtype
        self._decode_attention = (
            attention.NAME if self.device.type == "cpu" and attention.usable(model) else None
        )
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._waiting: deque[_Row] = deque()
        self._prefilling: list[_Row] = []
        self._running: list[_Row] = []
        self._cache = RowCache()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- callers ------------------------------------------------------------------------
    def submit(self, request: Request) -> Stream:
        """Queue `request`; its Stream gives the text as it is generated.

        Raises:
            DomainLMError: an empty or too long prompt, an unknown expert, or a request
                bigger than the KV-cache limit on its own.
            Overloaded: the queue is full (retry later).
        """
        return self.submit_all([request])[0]

    def submit_all(self, requests: list[Request]) -> list[Stream]:
        """`submit` for several requests, queued at once: an idle engine starts them in
        the same step, so what they share of the batch does not depend on timing (in bf16
        a row's numbers depend a little on its batch)."""
        rows: list[_Row] = []
        try:
            for request in requests:
                budget = self.check(request)
                expert = self.pool.acquire(request.expert)  # not evicted while in flight
                try:
                    rows.append(self._row(request, expert, budget))
                except BaseException:
                    self.pool.release(expert)
                    raise
            with self._cond:
                if self._closed:
                    raise DomainLMError("the engine is closed")
                if len(self._waiting) + len(rows) > self.max_queue:
                    raise Overloaded(
                        f"overloaded: {len(self._waiting)} requests are waiting; retry later"
                    )
                for row in rows:
                    row.stream.when_done(lambda expert=row.expert: self.pool.release(expert))
                self._waiting.extend(rows)
                self._start()
                self._cond.notify()
        except BaseException:
            for row in rows:
                self.pool.release(row.expert)
            raise
        return [row.stream for row in rows]

    def _row(self, request: Request, expert: str, budget: int) -> _Row:
        stream = Stream(request)
        random = None
        if not request.sampling.greedy:
            random = RowRandom(request.sampling, self.device)
        row = _Row(stream, expert, budget, TextTracker(self.tokenizer, request.stop), random)
        need = row.reserved * self.token_bytes
        if need > self.max_kv_bytes:
            raise DomainLMError(
                f"a prompt of {len(request.prompt)} tokens with up to {budget} new ones needs "
                f"{need / 2**20:.0f} MiB of KV cache; the engine's limit is "
                f"{self.max_kv_bytes / 2**20:.0f} MiB (lower max_new_tokens or raise the limit)"
            )
        return row

    def close(self) -> None:
        """Stop the worker; requests still queued or running fail with a clear error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        error = DomainLMError("the engine was closed before the request finished")
        for row in [*self._waiting, *self._prefilling, *self._running]:
            row.stream.fail(error)
        self._waiting.clear()
        self._prefilling.clear()
        self._running.clear()
        self._cache = RowCache()  # its memory goes now, not with the engine

    @property
    def load(self) -> dict[str, int]:
        """Requests waiting, prefilling and decoding now."""
        return {
            "waiting": len(self._waiting),
            "prefilling": len(self._prefilling),
            "running": len(self._running),
        }

    # -- the worker ---------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            _LIVE.add(self)
            self._thread = threading.Thread(target=self._loop, daemon=True, name="engine")
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._prefilling or self._running):
                    self._cond.wait()
                if self._closed:
                    return
            try:
                with self._cond:
                    self._admit()
                with torch.no_grad(), self.pool.lock:
                    self._drop_gone()
                    if self._prefilling:
                        self._prefill()
                    if self._running:
                        self._decode()
            except Exception as exc:  # a forward pass failed: every row in it gets the error
                error = _own_error(exc)
                for row in [*self._prefilling, *self._running]:
                    row.stream.fail(error)
                self._prefilling.clear()
                self._running.clear()
                self._cache = RowCache()

    def _admit(self) -> None:
        """Move queued requests to prefill, first come first served, within the limits."""
        if any(r.stream.cancelled for r in self._waiting):  # they give back their places
            for row in [r for r in self._waiting if r.stream.cancelled]:
                self._waiting.remove(row)
                self._finish(row, "cancelled")
        rows = [*self._prefilling, *self._running]
        widest = max((r.reserved for r in rows), default=0)
        while self._waiting:
            head = self._waiting[0]
            width = max(widest, head.reserved)
            if rows and (
                len(rows) >= self.max_rows
                or (len(rows) + 1) * width * self.token_bytes > self.max_kv_bytes
            ):
                return
            self._waiting.popleft()
            self._prefilling.append(head)
            rows.append(head)
            widest = width

    def _drop_gone(self) -> None:
        """Rows whose caller cancelled, or whose expert was unloaded, leave now."""
        for row in [r for r in self._prefilling if self._gone(r)]:
            self._prefilling.remove(row)
        keep = [i for i, r in enumerate(self._running) if not self._gone(r)]
        if len(keep) < len(self._running):
            self._running = [self._running[i] for i in keep]
            self._cache.keep(keep)

    def _gone(self, row: _Row) -> bool:
        if row.stream.cancelled:
            self._finish(row, "cancelled")
            return True
        if row.expert != BASE and row.expert not in self.pool.cards:
            row.stream.fail(DomainLMError(f"expert {row.expert!r} was unloaded"))
            return True
        return False

    def _forward(self, ids: torch.Tensor, experts: list[str], **kwargs: Any) -> torch.Tensor:
        """Last-position logits of `ids` (rows, tokens), row i on `experts[i]`."""
        if self._logits_to_keep:
            # An index rather than `1`: the model slices its hidden states with it, and an
            # indexed copy is contiguous, where a slice of a longer chunk made the output
            # layer's matmul copy its whole weight (30 ms a prefill for SmolLM2 under peft).
            kwargs["logits_to_keep"] = torch.tensor([ids.shape[1] - 1], device=self.device)
        with self.pool.batched(experts) as batched:
            if not batched:
                names = self.pool.peft_names(experts)
                if names is not None:
                    kwargs["adapter_names"] = names
            out = self.pool.model(input_ids=ids, use_cache=True, **kwargs)
        return out.logits[:, -1]

    def _prefill(self) -> None:
        """Up to `prefill_chunk` prompt tokens of the rows waiting for their prompt. Short
        prompts that fit whole are prefilled together in one forward pass (left-padded, as
        the running batch is); a long one takes a chunk of its own per step. A row's own
        failure (its forward pass, its sampling) fails it alone."""
        budget = self.prefill_chunk
        together: list[_Row] = []
        for row in list(self._prefilling):
            if budget <= 0:
                break
            size = len(row.request.prompt)
            width = max([size, *(len(r.request.prompt) for r in together)])
            if row.prefilled == 0 and (len(together) + 1) * width <= self.prefill_chunk:
                together.append(row)
                budget = self.prefill_chunk - (len(together) * width)
                continue
            try:
                budget -= self._prefill_row(row, budget)
            except Exception as exc:
                self._fail_prefill(row, exc)
        if len(together) > 1:
            try:
                self._prefill_together(together)
                return
            except Exception:  # find whose it was: each alone, below
                pass
        for row in together:
            try:
                self._prefill_row(row, len(row.request.prompt))
            except Exception as exc:
                self._fail_prefill(row, exc)

    def _fail_prefill(self, row: _Row, exc: Exception) -> None:
        if row in self._prefilling:
            self._prefilling.remove(row)
        row.cache = None
        row.stream.fail(_own_error(exc))

    def _prefill_together(self, rows: list[_Row]) -> None:
        """Prefill whole prompts in one pass, left-padded, and admit the rows that go on."""
        prompts = [r.request.prompt for r in rows]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        keep = torch.arange(width, device=self.device).unsqueeze(0) >= (width - lengths)[:, None]
        positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
        cache = RowCache(cap=width + max(r.budget for r in rows))
        started = time.perf_counter()
        logits = self._forward(
            ids,
            [r.expert for r in rows],
            past_key_values=cache,
            attention_mask=keep.long(),
            position_ids=positions,
        )
        self.stats.prefill_seconds += time.perf_counter() - started
        self.stats.prefill_tokens += int(lengths.sum())
        self.stats.prefill_passes += 1
        cache.lengths = [len(p) for p in prompts]
        cache.clear_padding()  # padding positions attended to nothing: no values to keep
        for row in rows:
            row.prefilled = len(row.request.prompt)
            self._prefilling.remove(row)
            if row.request.sampling.repetition_penalty != 1.0:
                row.history = list(row.request.prompt)
        try:
            tokens: list[int | None] = list(self._sample(logits, rows))
        except Exception:  # one row's settings or logits fail that row alone
            tokens = [self._sample_alone(logits[i : i + 1], row) for i, row in enumerate(rows)]
        going = [
            i
            for i, token in enumerate(tokens)
            if token is not None and not self._accept(rows[i], token)
        ]
        if not going:
            return
        cache.keep(going)
        self._cache.set_cap(max(r.reserved for r in [*self._running, *(rows[i] for i in going)]))
        self._cache.admit(cache)
        self._running.extend(rows[i] for i in going)

    def _prefill_row(self, row: _Row, budget: int) -> int:
        """Prefill up to `budget` more prompt tokens of `row`; returns how many."""
        prompt = row.request.prompt
        if row.cache is None:
            row.cache = RowCache(cap=row.reserved)
        take = min(budget, len(prompt) - row.prefilled)
        chunk = prompt[row.prefilled : row.prefilled + take]
        positions = torch.arange(row.prefilled, row.prefilled + take, device=self.device)
        started = time.perf_counter()
        logits = self._forward(
            torch.tensor([chunk], device=self.device),
            [row.expert],
            past_key_values=row.cache,
            position_ids=positions.unsqueeze(0),
        )
        self.stats.prefill_seconds += time.perf_counter() - started
        row.prefilled += take
        self.stats.prefill_tokens += take
        self.stats.prefill_passes += 1
        if row.prefilled < len(prompt):
            return take
        row.cache.lengths = [len(prompt)]
        if row.request.sampling.repetition_penalty != 1.0:
            row.history = list(prompt)
        (token,) = self._sample(logits, [row])
        self._prefilling.remove(row)
        if not self._accept(row, token):
            self._cache.set_cap(max(r.reserved for r in [*self._running, row]))
            self._cache.admit(row.cache)
            self._running.append(row)
        row.cache = None
        return take

    def _decode(self) -> None:
        started = time.perf_counter()
        rows = self._running
        ids = torch.tensor([[r.last] for r in rows], device=self.device)
        allowed, positions = self._cache.decode_inputs(self.device)
        mask: torch.Tensor = allowed.long()
        own = getattr(self._config, "_attn_implementation", None)
        if self._decode_attention is not None:  # every attention layer reads the config
            mask = attention.decode_mask(allowed, self._dtype)
            self._config._attn_implementation = self._decode_attention
        try:
            logits = self._forward(
                ids,
                [r.expert for r in rows],
                past_key_values=self._cache,
                attention_mask=mask,
                position_ids=positions,
            )
        finally:
            if self._decode_attention is not None:
                self._config._attn_implementation = own
        self._cache.stepped()
        self.stats.steps += 1
        self.stats.decode_tokens += len(rows)
        self.stats.rows_seen[len(rows)] += 1
        try:
            tokens: list[int | None] = list(self._sample(logits, rows))
        except Exception:  # one row's settings or logits (NaN, inf) fail that row alone
            tokens = [self._sample_alone(logits[i : i + 1], row) for i, row in enumerate(rows)]
        self.stats.decode_seconds += time.perf_counter() - started
        keep = [
            i
            for i, token in enumerate(tokens)
            if token is not None and not self._accept(rows[i], token)
        ]
        if len(keep) < len(rows):
            self._running = [rows[i] for i in keep]
            self._cache.keep(keep)

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        seen = [torch.tensor(r.history, device=logits.device) if r.history else None for r in rows]
        return next_tokens(
            logits, [r.request.sampling for r in rows], [r.random for r in rows], seen
        )

    def _sample_alone(self, logits: torch.Tensor, row: _Row) -> int | None:
        try:
            return self._sample(logits, [row])[0]
        except Exception as exc:
            row.stream.fail(_own_error(exc))
            return None

    def _accept(self, row: _Row, token: int) -> bool:
        """Take the row's next token; True when the row has finished."""
        row.tokens += 1
        row.stream.token_times.append(time.perf_counter())
        if token in self.eos and not row.request.sampling.ignore_eos:
            self._finish(row, "stop")
            return True
        row.stream.push(row.text.add(token))
        if row.text.stopped:
            self._finish(row, "stop")
            return True
        if row.tokens >= row.budget:
            self._finish(row, "length")
            return True
        row.last = token
        if row.history:
            row.history.append(token)
        return False

    def _finish(self, row: _Row, reason: str) -> None:
        row.stream.push(row.text.finish())
        row.stream.finish(Completion(row.text.text, row.tokens, reason, len(row.request.prompt)))
        if reason == "cancelled":
            self.stats.cancelled += 1
        else:
            self.stats.finished += 1


#: Engines whose worker runs: stopped at exit, so that no forward pass is cut off by the
#: interpreter's shutdown (a torch op in a dying daemon thread aborts the process).
_LIVE: weakref.WeakSet[LocalEngine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_LIVE):
        engine.close()


def _own_error(exc: Exception) -> DomainLMError:
    """A failure of one request, as the error its caller gets."""
    if isinstance(exc, DomainLMError):
        return exc
    return DomainLMError(f"generation failed: {type(exc).__name__}: {exc}")


def _eos_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    """The tokenizer's EOS and those of the model's generation config (Llama-3's
    <|eot_id|>, Qwen's <|im_end|>)."""
    ids: set[int] = set()
    for value in (
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV-cache bytes one token takes over all layers."""
    text = getattr(config, "text_config", None) or config
    heads = int(getattr(text, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(
        getattr(text, "head_dim", None) or int(getattr(text, "hidden_size", 64)) // heads
    )
    layers = int(getattr(text, "num_hidden_layers", 1) or 1)
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * kv_heads * head_dim * size


def _default_kv_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.3)  # a new row's admission copies the batch's cache once
    return CPU_KV_BYTES
