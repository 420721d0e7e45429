"""Generation for one or many requests, each with its own expert, batched together.

Rows are left-padded into one batch and run in one `generate` call with peft's per-row
`adapter_names`, so requests for different experts share every forward pass. Requests
with different sampling settings run as separate batches (one `generate` call each).

Text never holds a partial character: a token can end inside a character's UTF-8 bytes,
so streamed text waits for the character's last byte, and a reply cut off by the token
limit (or ended by the model) inside a character drops it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.errors import DomainLMError


@dataclass(frozen=True)
class Sampling:
    """Decoding settings (temperature 0 = greedy)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.temperature <= 0:
            out: dict[str, Any] = {"do_sample": False}
        else:
            out = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            out["top_k"] = self.top_k or None
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        return out


@dataclass
class Request:
    """One prompt (token ids) for one expert."""

    prompt: list[int]
    expert: str = BASE
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)


#: What tokenizers decode an incomplete UTF-8 sequence to.
REPLACEMENT = "\ufffd"


def decode(tokenizer: Any, ids: list[int]) -> str:
    """`ids` as text, less a trailing incomplete character (its first bytes decode to one
    U+FFFD; a model that writes U+FFFD itself as its very last character loses it)."""
    text: str = tokenizer.decode(ids, skip_special_tokens=False)
    return text[:-1] if text.endswith(REPLACEMENT) else text


class _TextQueue:
    """A `generate` streamer: queues the text of the generated ids as it becomes final.

    The whole reply is decoded at each step (a piece decoded alone can differ from its
    place in the whole, e.g. SentencePiece's leading spaces), and text ending in an
    incomplete character is held back until the character is complete.
    """

    def __init__(self, tokenizer: Any, timeout: float):
        self.tokenizer = tokenizer
        self.timeout = timeout
        self.ids: list[int] = []
        self.sent = 0  # characters queued so far
        self.failure: BaseException | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._prompt_seen = False
        self._ended = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate hands over the prompt first
            self._prompt_seen = True
            return
        if self._ended:
            return
        eos = self.tokenizer.eos_token_id
        for token in value.reshape(-1).tolist():
            if token == eos:
                self.end()
                return
            self.ids.append(token)
        self._send(decode(self.tokenizer, self.ids))

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._send(decode(self.tokenizer, self.ids))
            self._queue.put(None)

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self._queue.put(text[self.sent :])
            self.sent = len(text)

    def __iter__(self) -> Iterator[str]:
        while (piece := self._queue.get(timeout=self.timeout)) is not None:
            yield piece


def _stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the start of one of `stops`."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _until_stop(pieces: Iterable[str], stops: list[str]) -> Iterator[str]:
    """`pieces` up to the first stop string; text that may begin one waits for the next."""
    text, sent = "", 0
    for piece in pieces:
        text += piece
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:
            if cut > sent:
                yield text[sent:cut]
            return
        ready = len(text) - _stop_prefix(text, stops)
        if ready > sent:
            yield text[sent:ready]
            sent = ready
    if len(text) > sent:
        yield text[sent:]


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" or "length"


class Generator:
    """Runs requests on an AdapterPool's model (thread-safe: one batch at a time)."""

    def __init__(self, pool: AdapterPool):
        self.pool = pool
        self.tokenizer = pool.base.tokenizer
        self._lock = threading.Lock()
        config = pool.base.model.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0)

    def check_length(self, request: Request) -> None:
        if self.context and len(request.prompt) + 1 > self.context:
            raise DomainLMError(
                f"prompt of {len(request.prompt)} tokens exceeds the model's context of "
                f"{self.context} tokens (shorten the conversation or retrieve fewer articles)"
            )

    def run(self, requests: list[Request]) -> list[Completion]:
        """Completions for `requests`, in order; rows sharing sampling settings are batched."""
        for request in requests:
            self.check_length(request)
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[Sampling, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.sampling, []).append(i)
        for sampling, rows in groups.items():
            batch = [requests[i] for i in rows]
            for i, completion in zip(rows, self._batch(batch, sampling), strict=True):
                results[i] = completion
        return [r for r in results if r is not None]

    def _batch(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        width = max(len(r.prompt) for r in requests)
        # Room for the reply inside the context window.
        budget = sampling.max_new_tokens
        if self.context:
            budget = max(1, min(budget, self.context - width))
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):
            ids[row, width - len(request.prompt) :] = torch.tensor(request.prompt)
            mask[row, width - len(request.prompt) :] = 1
        device = next(self.pool.model.parameters()).device
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "max_new_tokens": budget,
            "pad_token_id": pad,
            "eos_token_id": self.tokenizer.eos_token_id,
            **sampling.kwargs(),
        }
        experts = [self.pool.resolve(r.expert) for r in requests]
        with self._lock, torch.no_grad():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = self._generate(kwargs, experts)
        return [
            self._completion(out[row, width:].tolist(), r, budget) for row, r in enumerate(requests)
        ]

    def _generate(self, kwargs: dict[str, Any], experts: list[str]) -> Any:
        """model.generate with row i on experts[i]: DomainLM's batched LoRA where it
        applies, peft's `adapter_names` otherwise."""
        with self.pool.batched(experts) as batched:
            names = None if batched else self.pool.peft_names(experts)
            if names is not None:
                kwargs["adapter_names"] = names
            return self.pool.model.generate(**kwargs)

    def _completion(self, ids: list[int], request: Request, budget: int) -> Completion:
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        finish = "length"
        if eos in ids:
            ids = ids[: ids.index(eos)]
            finish = "stop"
        ids = [i for i in ids if i != pad] if pad != eos else ids
        text = decode(self.tokenizer, ids)
        for stop in request.stop:
            if stop in text:
                text = text.split(stop, 1)[0]
                finish = "stop"
        return Completion(
            text, len(ids), finish if len(ids) < budget or finish == "stop" else "length"
        )

    def stream(self, request: Request) -> Iterator[str]:
        """Text pieces of one request as they are generated (stops at a stop string; text
        that may begin one waits for the next piece).

        Closing the iterator (as a caller does when Ctrl-C interrupts it) stops the
        generation at its next step.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stopped(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stopped.is_set()

        self.check_length(request)
        stopped = threading.Event()
        texts = _TextQueue(self.tokenizer, timeout=600.0)  # never block forever
        ids = torch.tensor([request.prompt], device=next(self.pool.model.parameters()).device)
        pad = self.tokenizer.pad_token_id
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": request.sampling.max_new_tokens,
            "pad_token_id": pad if pad is not None else self.tokenizer.eos_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "streamer": texts,
            "stopping_criteria": StoppingCriteriaList([_Stopped()]),
            **request.sampling.kwargs(),
        }
        experts = [self.pool.resolve(request.expert)]

        def work() -> None:
            try:
                with self._lock, torch.no_grad():
                    self._generate(kwargs, experts)
            except BaseException as exc:  # handed to the reader, not lost in this thread
                texts.failure = exc
            finally:
                texts.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from _until_stop(texts, request.stop)
        finally:
            stopped.set()  # generation ends at its next step
            thread.join()
        if texts.failure is not None:
            raise texts.failure
