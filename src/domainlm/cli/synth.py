"""`domainlm synth RECIPE.yaml`: training data from documents and statutes, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from domainlm.cli.console import err, out


def synth(
    recipe_file: Annotated[Path, typer.Argument(help="Synth recipe YAML (see recipes/synth/).")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Recipe settings to override, as key=value (teacher.concurrency=8)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: the recipe's out).")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="At most N items per generator: a trial run."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run in --out: make only missing or failed items."
        ),
    ] = False,
) -> None:
    """Generate training data with the recipe's generators and teacher, check every row
    (citations, grounding, duplicates, length, language, refusals) and write data.jsonl,
    rejected.jsonl and report.md."""
    from domainlm.eval.evaluate import progress_bar
    from domainlm.synth.recipe import load_synth_recipe
    from domainlm.synth.run import synthesise

    recipe = load_synth_recipe(recipe_file, overrides)
    folder = output or recipe.output()
    try:
        with progress_bar(err, recipe.name) as progress:
            report = synthesise(recipe, folder, limit, resume, progress)
    except KeyboardInterrupt:
        err.print(
            f"stopped: finished items are in {folder}/items.jsonl; add --resume to continue",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(130) from None
    for name, counts in report["generators"].items():
        failed = f", {counts['failed']} failed" if counts.get("failed") else ""
        out.print(
            f"{name}: {counts.get('items', 0)} items{failed}, {counts.get('rows', 0)} rows, "
            f"{counts.get('kept', 0)} kept",
            markup=False,
            highlight=False,
        )
    removed = ", ".join(f"{k} {v}" for k, v in report["removed"].items() if v) or "nothing"
    usage = report["usage"]
    out.print(f"checks removed: {removed}", markup=False, highlight=False)
    if usage["requests"]:
        out.print(
            f"teacher: {usage['requests']} requests ({usage['retries']} retries), "
            f"{usage['prompt_tokens'] + usage['completion_tokens']} tokens, "
            f"cost {report['cost']:.4f}",
            markup=False,
            highlight=False,
        )
    if report["failed"]:
        out.print(
            f"{report['failed']} items failed (see report.md); --resume tries them again",
            markup=False,
            highlight=False,
        )
    out.print(f"{report['kept']} rows: {report['data']}", markup=False, highlight=False)
    out.print(f"report: {folder / 'report.md'}", markup=False, highlight=False)
