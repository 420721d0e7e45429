"""The demo's evaluation stage: an expert of the answering model, and what it changed.

A few LoRA steps of the answering model (`--model`, SmolLM2-135M-Instruct by default) on the
demo's train split, with the shipped finance suite as the recipe's `eval.suite`: training
ends by running the suite on the base and the new expert, and the summary goes into the
expert card. Then the shipped law suite (consultations scored against references, their
citations checked in the demo's statute KB, the KB's retrieval on qrels) on both. Each run
writes results.jsonl, summary.json, report.md and report.html.

Eight steps change a 135M model little, and the example files are a few items each: the
stage shows the mechanics (before/after, flips, intervals), not a better model.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from domainlm.cli.console import err, out
from domainlm.errors import DomainLMError

SUITES = Path(__file__).resolve().parents[3] / "recipes" / "eval"
NAME = "demo-chat"
STEPS = 8


def evaluate_expert(model: str, output: Path, kb: Any) -> None:
    """Train the stage's expert of `model` under `output`/eval/experts and run both suites."""
    if not (SUITES / "finance.yaml").is_file():
        err.print(f"skipping the evaluation: no suites in {SUITES}", markup=False)
        return
    started = time.perf_counter()
    experts = output / "eval" / "experts"
    try:
        folder = _train(model, output, experts)
    except DomainLMError as exc:
        err.print(f"skipping the evaluation: {exc}", markup=False)
        return
    from domainlm.eval.summary import card_parts

    # Training printed the finance suite's numbers; they are in the card as well.
    out.print(f"finance suite report: {folder / 'eval' / 'report.html'}", markup=False)
    if kb is None:
        return
    summary = _law_suite(model, experts, output)
    _show("law", card_parts(summary), output / "eval" / "law" / "report.html")
    # The suite's KB is the default demo folder's; another output folder names its own.
    where = "" if output.resolve() == SUITES.parents[1] / "demo-out" else _kb_overrides(output)
    out.print(
        f"evaluation stage done in {time.perf_counter() - started:.1f}s; again: domainlm eval "
        f"recipes/eval/law.yaml{where} --model {model} --experts {experts} --models "
        f"base,{NAME}",
        markup=False,
    )


def _kb_overrides(output: Path) -> str:
    # Absolute: a relative override would be read against the suite's folder.
    kb = output.resolve() / "lawkb"
    return f" tasks.1.kb={kb} tasks.2.kb={kb}"


def _train(model: str, output: Path, experts: Path) -> Path:
    from domainlm.expert import partial_folder
    from domainlm.train.recipe import Recipe
    from domainlm.train.trainer import train

    shutil.rmtree(experts / NAME, ignore_errors=True)
    shutil.rmtree(partial_folder(experts / NAME), ignore_errors=True)
    shutil.rmtree(output / "eval" / "law", ignore_errors=True)
    recipe = Recipe.model_validate(
        {
            "name": NAME,
            "description": f"A few LoRA steps of {model} on the demo split, evaluated.",
            "base": {"path": model, "chat_format": "auto"},
            "datasets": [{"path": output / "split" / "train.jsonl"}],
            "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
            "optim": {
                "max_steps": STEPS,
                "batch_size": 4,
                "max_seq_len": 512,
                "lr": 2e-4,
                "schedule": "constant",
            },
            "eval": {
                "dev": output / "split" / "dev.jsonl",
                "eval_steps": STEPS,
                "samples": 0,
                "suite": SUITES / "finance.yaml",
            },
            "save_steps": STEPS,
            "output_dir": experts,
        }
    )
    out.print(f"\nevaluation: {STEPS} LoRA steps of {model} ({experts / NAME}) …", markup=False)
    return train(recipe, console=err)


def _law_suite(model: str, experts: Path, output: Path) -> dict[str, Any]:
    from domainlm.eval.evaluate import evaluate, local_models, progress_bar
    from domainlm.eval.suite import load_suite

    suite = load_suite(SUITES / "law.yaml", _kb_overrides(output).split())
    models = local_models(model, experts)
    try:
        with progress_bar(err, f"eval {suite.name}") as progress:
            return evaluate(
                suite, models, ["base", NAME], output / "eval" / "law", progress=progress
            )
    finally:
        models.close()


def _show(suite: str, parts: list[dict[str, Any]], report: Path) -> None:
    from domainlm.eval.report import card_line

    out.print(f"\n{suite} suite, base -> {NAME} (report: {report}):", markup=False)
    for part in parts:
        out.print(f"  {card_line(part)}", markup=False)
