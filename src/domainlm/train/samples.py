"""Before/after samples: a few dev prompts answered by the base and by the new expert.

This is the check ChatGLM3's fine-tuning tutorial does by hand after training: the same
question to the model with the adapter off and on, side by side. The answers come from
the engine, as `ask` would give them: the saved adapter (the best by eval loss), every
prompt before and after in one running batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from domainlm.chat.conversation import Conversation
from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.generation import Completion, Request, Sampling
from domainlm.engine.local import LocalEngine
from domainlm.train.setup import set_attention

if TYPE_CHECKING:
    from domainlm.train.trainer import Run

MAX_NEW_TOKENS = 96


def _prompt(conversation: Conversation) -> Conversation | None:
    """The conversation up to (not including) its last assistant message."""
    for i in range(len(conversation.messages) - 1, 0, -1):
        if conversation.messages[i].role == "assistant":
            return Conversation(messages=conversation.messages[:i], tools=conversation.tools)
    return None


def generate(pool: AdapterPool, requests: list[Request]) -> list[Completion]:
    """The completions of `requests` from an engine over `pool`, closed afterwards (a
    Ctrl-C cancels the requests and still closes it)."""
    engine = LocalEngine(pool)
    try:
        return engine.run(requests)
    finally:
        engine.close()


def expert_pool(run: Run, adapter: Path) -> AdapterPool:
    """The base with the saved adapter (in the expert folder `adapter`) as the engine
    serves them. The run's model is done training: its LoRA layers are taken out."""
    peft_model = run.accelerator.unwrap_model(run.loss_model).model
    model = peft_model.unload().eval()  # the base, without the training adapter
    set_attention(model, run.inference_attention)
    pool = AdapterPool(replace(run.base, model=model))
    pool.add(adapter, name=run.recipe.name)
    return pool


def before_after(
    run: Run, pool: AdapterPool, console: Console, stop: Callable[[], bool] | None = None
) -> list[dict[str, str]]:
    """Answers of base and expert (`expert_pool`) to the first `eval.samples` dev prompts,
    printed as a table.

    Returns no rows when `stop` says so before the answers are generated.
    """
    prompts = [p for p in map(_prompt, run.dev_conversations) if p is not None]
    prompts = prompts[: run.recipe.eval.samples]
    if not prompts or (stop is not None and stop()):
        return []
    console.print(f"before/after samples: {len(prompts)} dev prompts …")
    name = run.recipe.name
    sampling = Sampling(max_new_tokens=MAX_NEW_TOKENS)
    stops = run.chat_format.stop_strings
    ids = [run.chat_format.render_prompt(p) for p in prompts]
    requests = [Request(p, who, sampling, stops) for who in (BASE, name) for p in ids]
    answers = [c.text.strip() for c in generate(pool, requests)]
    rows = [
        {"prompt": prompt.messages[-1].content or "", "base": before, "expert": after}
        for prompt, before, after in zip(
            prompts, answers[: len(prompts)], answers[len(prompts) :], strict=True
        )
    ]
    table = Table(title="before / after", show_lines=True)
    for column in ("prompt", "base", "expert"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["prompt"], row["base"], row["expert"])
    console.print(table)
    return rows


def suite_report(run: Run, pool: AdapterPool, console: Console) -> dict[str, Any]:
    """The recipe's eval suite on base and expert, its report written to the work folder's
    eval/ (kept when an interrupted end step is resumed: finished items are not re-run);
    the summary for the card: per task, both scores and the difference."""
    from domainlm.eval.evaluate import evaluate, progress_bar
    from domainlm.eval.models import LocalModels
    from domainlm.eval.report import card_line
    from domainlm.eval.suite import load_suite
    from domainlm.eval.summary import card_parts

    assert run.recipe.eval.suite is not None
    suite = load_suite(run.recipe.eval.suite)
    name = run.recipe.name
    console.print(f"eval suite {suite.name}: base and {name} …")
    models = LocalModels(pool, run.chat_format)
    try:
        with progress_bar(console, f"eval {suite.name}") as progress:
            summary = evaluate(
                suite, models, ["base", name], run.work / "eval", resume=True, progress=progress
            )
    finally:
        models.close()
    parts = card_parts(summary)
    for entry in parts:
        console.print(f"  {card_line(entry)}", markup=False)
    return {"suite": suite.name, "report": "eval/report.html", "parts": parts}
