"""Experts made in-process for engine tests (random LoRA weights, a proper card)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from domainlm.expert import BaseRef, ExpertCard, write_card
from domainlm.models.base import load_base


def make_expert(
    folder: Path, name: str, seed: int, description: str = "", content_hash: str | None = None
) -> Path:
    """A LoRA expert for the tiny base with random (non-zero) weights."""
    from peft import LoraConfig, get_peft_model

    base = load_base("tiny")
    torch.manual_seed(seed)
    model = get_peft_model(
        base.model,
        LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
    )
    target = folder / name
    model.save_pretrained(target)
    card = ExpertCard(
        name=name,
        description=description,
        base=BaseRef(
            model="tiny", content_hash=content_hash or base.content_hash, chat_format="hf"
        ),
        stage="sft",
    )
    write_card(target, card)
    return target


def tiny_base() -> Any:
    return load_base("tiny")


def read_concurrently(engine: Any, requests: list[Any]) -> list[str | None]:
    """The text of each request's stream, each read by its own thread at the same time."""
    texts: list[str | None] = [None] * len(requests)

    def read(i: int) -> None:
        texts[i] = "".join(engine.stream(requests[i]))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return texts
