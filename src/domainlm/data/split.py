"""Seeded train/dev/test splits."""

from __future__ import annotations

import math
import random
from typing import TypeVar

from domainlm.errors import DomainLMError

T = TypeVar("T")


def split_sizes(total: int, dev: float, test: float) -> tuple[int, int, int]:
    """Sizes of (train, dev, test); `dev`/`test` below 1 are fractions, else counts."""

    def size(value: float, name: str) -> int:
        if math.isfinite(value) and 0 <= value < 1:
            return round(total * value)
        if math.isfinite(value) and value >= 1 and value == int(value):
            return int(value)
        raise DomainLMError(
            f"--{name} {value:g}: give a share below 1 (0.05 for 5%) or a whole count (200)"
        )

    n_dev, n_test = size(dev, "dev"), size(test, "test")
    if n_dev + n_test >= total:
        raise DomainLMError(
            f"dev ({n_dev}) + test ({n_test}) leave no training data out of {total}"
        )
    return total - n_dev - n_test, n_dev, n_test


def split(items: list[T], dev: float, test: float, seed: int) -> dict[str, list[T]]:
    """Shuffle `items` with `seed` and cut them into train, dev and test."""
    n_train, n_dev, _ = split_sizes(len(items), dev, test)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    shuffled = [items[i] for i in order]
    return {
        "train": shuffled[:n_train],
        "dev": shuffled[n_train : n_train + n_dev],
        "test": shuffled[n_train + n_dev :],
    }
