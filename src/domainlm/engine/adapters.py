"""AdapterPool: many experts (PEFT LoRA folders) on one loaded base, chosen per request.

Experts are loaded once with peft (`load_adapter`), kept up to `max_loaded` with
least-recently-used eviction, and used per row of a batch through peft's `adapter_names`
(`"base"` rows run without an adapter). Only folders under the configured roots load, and
an expert trained on another base (weights fingerprint in its card) is refused.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.models.base import BaseModel
from domainlm.train.expert import ADAPTER_FILES, ExpertCard, read_card

BASE = "base"
#: peft's name for "no adapter" in a mixed batch.
PEFT_BASE = "__base__"


class AdapterPool:
    """Experts by name on one base model."""

    def __init__(self, base: BaseModel, roots: list[Path] | None = None, max_loaded: int = 8):
        self.base = base
        self.roots = [r.resolve() for r in (roots or [])]
        self.max_loaded = max_loaded
        self.cards: OrderedDict[str, ExpertCard] = OrderedDict()  # LRU order, oldest first
        self.folders: dict[str, Path] = {}
        self.model: Any = base.model
        self._lock = threading.RLock()
        self._multi: Any = None  # MultiLora over the loaded experts, rebuilt when they change
        self._stale = True

    @property
    def names(self) -> list[str]:
        return [BASE, *self.cards]

    def add(self, folder: str | Path, name: str | None = None) -> ExpertCard:
        """Load the expert in `folder` (named by its card unless `name` is given).

        Raises:
            DomainLMError: outside the roots, incomplete, or trained on another base.
        """
        folder = Path(folder).resolve()
        if self.roots and not any(folder.is_relative_to(root) for root in self.roots):
            raise DomainLMError(
                f"{folder}: experts load only from {', '.join(map(str, self.roots))}"
            )
        card = read_card(folder)
        missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
        if missing:
            raise DomainLMError(f"{folder}: not a complete expert (missing {', '.join(missing)})")
        if card.base.content_hash != self.base.content_hash:
            raise DomainLMError(
                f"expert {card.name} was trained on another base model "
                f"({card.base.model}, {card.base.content_hash}); this one is "
                f"{self.base.model_id} ({self.base.content_hash})"
            )
        name = name or card.name
        if name == BASE:
            raise DomainLMError(f"{BASE!r} is reserved for the base model")
        with self._lock:
            if name in self.cards:
                self.cards.move_to_end(name)
                return self.cards[name]
            while len(self.cards) >= self.max_loaded:
                self._evict(next(iter(self.cards)))
            self._load(folder, name)
            self.cards[name] = card
            self.folders[name] = folder
            self._stale = True
        return card

    def _load(self, folder: Path, name: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.base.model, str(folder), adapter_name=name)
        self.model.eval()

    def _evict(self, name: str) -> None:
        self.model.delete_adapter(name)
        del self.cards[name]
        del self.folders[name]
        self._stale = True

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self.cards:
                raise DomainLMError(f"no expert {name!r} loaded (loaded: {', '.join(self.names)})")
            self._evict(name)

    def resolve(self, name: str | None) -> str:
        """The loaded expert called `name` (None or "base" for the base), marked recently used."""
        if name in (None, BASE):
            return BASE
        with self._lock:
            if name not in self.cards:
                raise DomainLMError(f"no expert {name!r} (loaded: {', '.join(self.names)})")
            self.cards.move_to_end(name)
        return name

    def peft_names(self, names: list[str]) -> list[str] | None:
        """peft's `adapter_names` for rows using `names`; None when no adapter is loaded."""
        if not self.cards:
            return None
        return [PEFT_BASE if n == BASE else n for n in names]

    @contextlib.contextmanager
    def batched(self, experts: list[str]) -> Iterator[bool]:
        """Run the body with `experts[i]` applied to row i by DomainLM's batched LoRA.

        Yields True when the batched path is active (call the model without
        `adapter_names`), False when the caller must use peft's `adapter_names` instead
        (no adapters loaded, or an adapter variant the batched path does not cover).
        """
        from domainlm.engine.multilora import MultiLora

        if not self.cards:
            yield False
            return
        with self._lock:
            if self._stale:
                if self._multi is not None:
                    self._multi.remove()
                self._multi = MultiLora(self.model, list(self.cards))
                self._stale = False
            multi = self._multi
        if not multi.ok:
            yield False
            return
        device = next(self.model.parameters()).device
        multi.set_rows([None if e == BASE else e for e in experts], device)
        try:
            with self.model.disable_adapter():
                yield True
        finally:
            multi.clear()

    def card(self, name: str) -> ExpertCard | None:
        return self.cards.get(name)
