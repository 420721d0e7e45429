"""The demo's answering stage: statute KB, then legal questions and a computation.

The default model (SmolLM2-135M-Instruct) is tiny and English-only, so what carries the
answers here is what DomainLM adds around it: the articles retrieved for each question
(with their status checked in the knowledge base) and the citations checked in the reply.
It does not call the finance tools it is offered (the demo says so rather than implying a
tool ran); a real base model passed with `--model` writes the prose and makes the calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from domainlm.cli.console import err, out
from domainlm.errors import DomainLMError

LEGAL_QUESTIONS = [
    "什么是定金？定金最多可以约定多少？",
    "朋友借钱不还，我该怎么办？",
    "楼上住户高空抛物砸伤了人，谁来承担责任？",
]
COMPUTATION = "本金10000元，年利率5%，按年复利，10年后本息合计多少？(10000*(1+0.05)**10)"


def statute_kb(folder: Path) -> Any:
    """The statute KB at `folder`, built on first use; None (with the reason) if it can't be."""
    from domainlm.kb.base import KnowledgeBase, build

    started = time.perf_counter()
    try:
        try:
            kb = KnowledgeBase.open(folder)
            how = "opened"
        except DomainLMError:
            with err.status("building the statute knowledge base …"):
                kb = build(folder, ["china-law"])
            how = "built"
    except DomainLMError as exc:
        err.print(f"no knowledge base: {exc}", markup=False)
        return None
    stats = kb.stats()
    out.print(
        f"\nknowledge base {how} in {time.perf_counter() - started:.1f}s: {stats['chunks']} "
        f"articles of {stats['laws']} laws ({folder})",
        markup=False,
    )
    return kb


def answer_questions(model: str, kb: Any) -> None:
    """Three legal questions (grounded in `kb`) and one computation (finance tools)."""
    from domainlm.engine.generation import Sampling
    from domainlm.engine.setup import build_assistant

    started = time.perf_counter()
    try:
        with err.status(f"loading {model} …"):
            assistant = build_assistant(
                model, tools=["finance"], sampling=Sampling(max_new_tokens=96)
            )
    except DomainLMError as exc:
        err.print(f"skipping the answers: {exc}", markup=False)
        return
    assistant.kb = kb
    try:
        _answer(assistant, model, kb, started)
    finally:
        assistant.close()


def _answer(assistant: Any, model: str, kb: Any, started: float) -> None:
    from domainlm.engine.assistant import Session

    out.print(f"\nmodel {model} loaded in {time.perf_counter() - started:.1f}s", markup=False)
    for question in LEGAL_QUESTIONS:
        reply = assistant.reply(Session(), question, use_kb=kb is not None, use_tools=False)
        _show(question, reply, kb)
    reply = assistant.reply(Session(), COMPUTATION, use_kb=False)
    _show(COMPUTATION, reply, None)
    if not reply.tool_trace:
        out.print("  no tool call: the model did the arithmetic itself", markup=False)
    out.print(
        "\nNote: SmolLM2-135M-Instruct (the default model) is a tiny English model: it writes "
        "no usable Chinese and is too small to call the tools it is offered. The retrieved "
        "articles and checked citations above carry the legal answers. Pass --model PATH (a "
        "local HF folder or .gguf file of e.g. Qwen2.5-7B-Instruct or GLM-4-9B-chat) for real "
        "answers and tool calls.",
        markup=False,
    )


def _show(question: str, reply: Any, kb: Any) -> None:
    out.print(f"\n[bold]Q: {question}[/bold]")
    text = reply.text.strip().replace("\n", " ")
    out.print(f"model: {text[:160]}{'…' if len(text) > 160 else ''}", markup=False)
    if reply.articles and kb is not None:
        # Each article handed to the model, checked against the KB as a citation.
        checks = kb.verify("；".join(a.citation for a in reply.articles))
        for article, check in zip(reply.articles, checks, strict=False):
            out.print(
                f"  ✓ {article.citation} [{check.verdict}] {article.text[:70]}…", markup=False
            )
    for citation in reply.citations:
        mark = "✗" if citation in reply.unverified else "✓"
        out.print(f"  cited {mark} {citation.text}: {citation.verdict}", markup=False)
    for observation in reply.tool_trace:
        mark = "✓" if observation.ok else "✗"
        out.print(
            f"  tool {mark} {observation.name}({observation.arguments}) → {observation.content}",
            markup=False,
        )
    timing = ", ".join(f"{k} {v:.2f}" for k, v in reply.timings.items())
    out.print(f"  [dim]{timing}[/dim]")
