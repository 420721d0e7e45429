"""Project-level checks: every module imports, docs are current, the demo runs, the tiny model trains."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import domainlm
from domainlm.chat import Conversation
from domainlm.chat.formats import get_format
from domainlm.cli import docs
from domainlm.expert import Expert

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_imports() -> None:
    names = [m.name for m in pkgutil.walk_packages(domainlm.__path__, "domainlm.")]
    assert "domainlm.chat.formats.chatglm3" in names
    for name in names:
        importlib.import_module(name)


def test_cli_docs_are_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == docs.render(), (
        "run `make docs`"
    )


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:20]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_demo_converts_every_example(cli: Any, tmp_path: Path) -> None:
    code, stdout, stderr = cli("demo", "--output", tmp_path, "--model", "tiny")
    assert code == 0, stderr
    for name in (
        "law_qa",
        "chatglm3_tools",
        "openai_messages",
        "sharegpt",
        "alpaca",
        "prompt_response",
    ):
        assert (tmp_path / f"{name}.jsonl").stat().st_size > 0
    assert (tmp_path / "law_qa.rejected.jsonl").exists()
    assert {p.name for p in (tmp_path / "split").iterdir()} == {
        "train.jsonl",
        "dev.jsonl",
        "test.jsonl",
    }
    assert "trained tokens in green" in stdout
    expert = tmp_path / "experts" / "demo"
    for name in ("adapter_model.safetensors", "expert.yaml", "metrics.jsonl", "loss.png"):
        assert (expert / name).is_file(), name
    # What training changed, legibly: the loss falling, not a random model's text.
    first_screens = stdout.split("knowledge base")[0]
    assert f"expert demo: {expert}" in first_screens
    line = next(x for x in first_screens.splitlines() if "train loss per answer token" in x)
    start, end = [float(w) for w in line.split() if w.replace(".", "").isdigit()][:2]
    assert end < start - 1.0, line  # 16 steps take the tiny model well below ln(1024)
    assert "\ufffd" not in first_screens + stderr and "before" not in first_screens + stderr
    # The answering stage: retrieved articles for the legal questions, the tool step.
    assert "Q: 什么是定金？定金最多可以约定多少？" in stdout
    assert "《中华人民共和国民法典》第五百八十六条 [current]" in stdout
    assert "--model PATH" in stdout
    # The evaluation stage: an expert of the answering model, both suites before/after.
    chat = tmp_path / "eval" / "experts" / "demo-chat"
    card = Expert.open(chat).card
    assert card.evaluation["suite"] == "finance" and (chat / "eval" / "report.html").is_file()
    assert {p["task"] for p in card.evaluation["parts"]} >= {
        "finance-exam",
        "fincalc",
        "tool-calls",
    }
    law = json.loads((tmp_path / "eval" / "law" / "summary.json").read_text())
    assert {p["task"] for p in law["parts"]} == {"law-consult", "law-citations", "law-retrieval"}
    assert "law-retrieval (retrieval) recall@5 %:" in stdout
    assert "law-consult (text) ROUGE-L: base " in stdout
    # Running it again reuses the knowledge base and replaces the demo expert.
    code, stdout, _ = cli("demo", "--output", tmp_path, "--model", "tiny")
    assert code == 0 and "knowledge base opened" in stdout


def test_rendered_labels_train_the_tiny_model(tokenizer: Any, tiny_model: Any) -> None:
    import torch

    fmt = get_format("chatglm3", tokenizer)
    rendered = fmt.render(
        Conversation.from_record(
            {
                "messages": [
                    {"role": "user", "content": "定金是什么？"},
                    {"role": "assistant", "content": "定金是一种担保。"},
                ]
            }
        )
    )
    ids = torch.tensor([rendered.input_ids])
    labels = torch.tensor([rendered.labels])
    loss = tiny_model(input_ids=ids, labels=labels).loss
    assert torch.isfinite(loss) and loss.item() > 0
    # Only trained positions count: masking everything but one more token changes the loss.
    labels_fewer = labels.clone()
    labels_fewer[0, labels_fewer[0].ne(-100).nonzero()[0]] = -100
    assert tiny_model(input_ids=ids, labels=labels_fewer).loss.item() != loss.item()
    assert sum(p.numel() for p in tiny_model.parameters()) < 500_000


def test_demo_law_suite_finds_its_kb_from_a_relative_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo` runs `domainlm demo` with the relative demo-out/: the suite's KB
    override must not be read against the suite's own folder."""
    from domainlm.cli.demo_eval import _kb_overrides

    monkeypatch.chdir(tmp_path)
    overrides = _kb_overrides(Path("demo-out")).split()
    assert overrides == [f"tasks.{i}.kb={tmp_path / 'demo-out' / 'lawkb'}" for i in (1, 2)]
