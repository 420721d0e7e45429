"""Experts made in-process for engine tests (random LoRA weights, a proper card)."""

from __future__ import annotations

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
