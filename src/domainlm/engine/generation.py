"""Generation for one or many requests, each with its own expert, batched together.

Rows are left-padded into one batch and run in one `generate` call with peft's per-row
`adapter_names`, so requests for different experts share every forward pass. Requests
with different sampling settings run as separate batches (one `generate` call each).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        for stop in request.stop:
            if stop in text:
                text = text.split(stop, 1)[0]
                finish = "stop"
        return Completion(
            text, len(ids), finish if len(ids) < budget or finish == "stop" else "length"
        )

    def stream(self, request: Request) -> Iterator[str]:
        """Text pieces of one request as they are generated (stops at a stop string)."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Stopped(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stopped.is_set()

        self.check_length(request)
        stopped = threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False)
        ids = torch.tensor([request.prompt], device=next(self.pool.model.parameters()).device)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": request.sampling.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Stopped()]),
            **request.sampling.kwargs(),
        }
        experts = [self.pool.resolve(request.expert)]

        def work() -> None:
            with self._lock, torch.no_grad():
                self._generate(kwargs, experts)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        streamer.timeout = 600.0  # never block forever if generation dies
        for piece in streamer:
            eos_text = self.tokenizer.eos_token or ""
            if eos_text and eos_text in piece:
                piece = piece.split(eos_text, 1)[0]
            text += piece
            cut = min((text.find(s) for s in request.stop if s in text), default=-1)
            if cut >= 0:
                yield piece[: max(0, len(piece) - (len(text) - cut))]
                stopped.set()  # generation ends at its next step
                for _ in streamer:  # drain what was produced before the stop took effect
                    pass
                break
            yield piece
        thread.join()
