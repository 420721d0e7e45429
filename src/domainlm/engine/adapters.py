"""AdapterPool: many experts (PEFT LoRA folders) on one loaded base, chosen per request.

Experts are loaded once with peft (`load_adapter`), kept up to `max_loaded` with
least-recently-used eviction, and used per row of a batch through peft's `adapter_names`
(`"base"` rows run without an adapter). Only folders under the configured roots load, and
an expert trained on another base (weights fingerprint in its card) is refused. A folder
that is not an expert is refused with the reason (an unfinished run, no card, no adapter);
`scan` loads a whole folder of experts and keeps the reasons for the ones it skipped.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.expert import (
    ADAPTER_FILES,
    CARD_FILE,
    METRICS_FILE,
    PARTIAL_SUFFIX,
    ExpertCard,
    check_expert,
)
from domainlm.models.base import BaseModel

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
        #: Why each folder `scan` passed over is not loaded, by the name it would have.
        self.skipped: dict[str, str] = {}
        self.model: Any = base.model
        self._lock = threading.RLock()  # the bookkeeping: cards, folders, in-flight counts
        self._model_lock = threading.RLock()  # the model: a forward pass, loading, evicting
        self._busy: Counter[str] = Counter()  # requests in flight per expert
        self._multi: Any = None  # MultiLora over the loaded experts, rebuilt when they change
        self._stale = True

    @property
    def lock(self) -> Any:
        """Held while the model runs a step and while experts are loaded or removed, so an
        expert never changes under a running forward pass (looking one up does not wait
        for it)."""
        return self._model_lock

    def hold(self, name: str) -> None:
        """A request for `name` is in flight: least-recently-used eviction passes it over."""
        if name != BASE:
            with self._lock:
                self._busy[name] += 1

    def release(self, name: str) -> None:
        if name != BASE:
            with self._lock:
                self._busy[name] -= 1
                if self._busy[name] <= 0:
                    del self._busy[name]

    @property
    def names(self) -> list[str]:
        return [BASE, *self.cards]

    def scan(self, root: Path) -> dict[str, str]:
        """Load every expert in the folder `root`, or `root` itself when it is an expert
        folder; returns (and keeps in `skipped`) why each other sub-folder is not loaded.

        Raises:
            DomainLMError: `root` is missing, or is an expert folder that does not load.
        """
        if not root.is_dir():
            raise DomainLMError(f"{root}: no such experts folder")
        if _expert_like(root):
            self.add(root)
            return {}
        skipped = {}
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            try:
                self.add(folder)
            except DomainLMError as exc:
                skipped[folder.name.removesuffix(PARTIAL_SUFFIX)] = str(exc)
        self.skipped.update(skipped)
        return skipped

    def add(self, folder: str | Path, name: str | None = None) -> ExpertCard:
        """Load the expert in `folder` (named by its card unless `name` is given).

        Raises:
            DomainLMError: outside the roots, not a complete expert (the message says
                why), trained on another base, or its name is taken by another folder.
        """
        shown = Path(folder)  # messages name the folder as the caller did
        folder = shown.resolve()
        if self.roots and not any(folder.is_relative_to(root) for root in self.roots):
            raise DomainLMError(
                f"{folder}: experts load only from {', '.join(map(str, self.roots))}"
            )
        card = check_expert(shown)
        if card.base.content_hash != self.base.content_hash:
            raise DomainLMError(
                f"expert {card.name} was trained on another base model "
                f"({card.base.model}, {card.base.content_hash}); this one is "
                f"{self.base.model_id} ({self.base.content_hash})"
            )
        name = name or card.name
        if name == BASE:
            raise DomainLMError(f"{BASE!r} is reserved for the base model")
        with self._model_lock:
            with self._lock:
                if name in self.cards and self.folders[name] != folder:
                    raise DomainLMError(
                        f"{shown}: expert {name!r} is already loaded from {self.folders[name]}"
                    )
                if name in self.cards:
                    self.cards.move_to_end(name)
                    return self.cards[name]
                evict: list[str] = []
                idle = [n for n in self.cards if not self._busy[n]]  # oldest first
                while len(self.cards) - len(evict) >= self.max_loaded:
                    if not idle:
                        raise DomainLMError(
                            f"cannot load {name!r}: all {self.max_loaded} loaded experts have "
                            "requests in flight (retry later or raise the limit)"
                        )
                    evict.append(idle.pop(0))
            for old in evict:
                self._evict(old)
            self._load(shown, name)
            with self._lock:
                self.cards[name] = card
                self.folders[name] = folder
                self._stale = True
        return card

    def _load(self, folder: Path, name: str) -> None:
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(
                    self.base.model, str(folder), adapter_name=name
                )
        except Exception as exc:  # peft, torch and safetensors raise many kinds here
            self._undo(name)
            reason = " ".join(str(exc).split())  # torch lists every mismatch over many lines
            reason = reason if len(reason) <= 300 else reason[:300] + " …"
            raise DomainLMError(f"{folder}: cannot load the adapter: {reason}") from None
        self.model.eval()

    def _undo(self, name: str) -> None:
        """Take out what a failed load of adapter `name` left in the model."""
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        if isinstance(self.model, PeftModel):
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            return
        # The first adapter: peft put LoRA layers into the base itself before failing.
        base = self.base.model
        for path, module in list(base.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent, _, child = path.rpartition(".")
                setattr(base.get_submodule(parent), child, module.get_base_layer())
        if hasattr(base, "peft_config"):
            del base.peft_config

    def _evict(self, name: str) -> None:
        """Take `name` out (the caller holds the model lock)."""
        with self._lock:
            del self.cards[name]
            del self.folders[name]
            self._stale = True
        self.model.delete_adapter(name)

    def remove(self, name: str) -> None:
        """Unload `name`; requests in flight for it fail at the engine's next step."""
        with self._model_lock:
            if name not in self.cards:
                raise DomainLMError(f"no expert {name!r} loaded (loaded: {', '.join(self.names)})")
            self._evict(name)

    def resolve(self, name: str | None) -> str:
        """The loaded expert called `name` (None or "base" for the base), marked recently used."""
        if name in (None, BASE):
            return BASE
        with self._lock:
            if name not in self.cards and name in self.skipped:
                raise DomainLMError(f"no expert {name!r}: {self.skipped[name]}")
            if name not in self.cards:
                raise DomainLMError(f"no expert {name!r} (loaded: {', '.join(self.names)})")
            self.cards.move_to_end(name)
        return name

    def acquire(self, name: str | None) -> str:
        """`resolve` and `hold` at once (no eviction can come between them)."""
        with self._lock:
            resolved = self.resolve(name)
            self.hold(resolved)
        return resolved

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
        with self._model_lock:
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
        before = multi.disable_peft()
        try:
            yield True
        finally:
            multi.restore_peft(before)
            multi.clear()

    def card(self, name: str) -> ExpertCard | None:
        return self.cards.get(name)


def _expert_like(folder: Path) -> bool:
    """Whether `folder` is (or was meant to be) one expert rather than a folder of them."""
    markers = (CARD_FILE, METRICS_FILE, "checkpoints", *ADAPTER_FILES)
    return folder.name.endswith(PARTIAL_SUFFIX) or any((folder / m).exists() for m in markers)
