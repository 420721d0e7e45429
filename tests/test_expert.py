"""The Expert type lives outside train/: engine, serve and eval read experts through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainlm.errors import DomainLMError
from domainlm.expert import Expert
from tests.engine_helpers import make_expert


def test_expert_opens_a_complete_folder_and_says_why_not(tmp_path: Path) -> None:
    folder = make_expert(tmp_path, "law", seed=1, description="法律")
    expert = Expert.open(folder)
    assert (expert.name, expert.card.description, expert.metrics) == ("law", "法律", [])
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(DomainLMError, match=r"not an expert: no adapter_model\.safetensors"):
        Expert.open(folder)
    with pytest.raises(DomainLMError, match="no such expert folder"):
        Expert.open(tmp_path / "missing")


def test_train_does_not_own_the_expert_type() -> None:
    import domainlm.engine.adapters as adapters
    import domainlm.engine.router as router

    for module in (adapters, router):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        assert "domainlm.train" not in source, module.__name__
