"""`domainlm train` and `domainlm export`: parse arguments, call domainlm.train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from domainlm.cli.console import err, out
from domainlm.errors import DomainLMError
from domainlm.train.recipe import is_manifest, load_manifest, load_recipe


def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, or a manifest with `experts:`.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted overrides such as optim.lr=1e-4 optim.max_steps=100."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the latest checkpoint: an interrupted run, or a finished "
            "expert given a larger optim.max_steps or optim.epochs. A continuation may "
            "change the schedule (optim.lr, schedule, warmup_steps), evaluation and saving; "
            "not the base, data, stage, LoRA shape or batching.",
        ),
    ] = False,
    from_expert: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Start a new expert from this expert's adapter (same base and LoRA "
            "shape; data, stage and schedule may differ). Sets the recipe's from_expert.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a LoRA expert (or every expert of a manifest) from a recipe.

    Paths written in the recipe are relative to its folder; paths on the command line
    (overrides, --from) to the working directory.
    """
    from domainlm.train.trainer import Interrupted
    from domainlm.train.trainer import train as run_training

    console = err if not quiet else None
    if is_manifest(recipe):
        if from_expert is not None:
            raise DomainLMError(
                f"{recipe}: --from starts one expert; in a manifest, give an expert its own "
                "from_expert"
            )
        recipes = load_manifest(recipe, overrides)
        resume = True  # a manifest skips finished experts and continues unfinished ones
    else:
        recipes = [load_recipe(recipe, overrides)]
        if from_expert is not None:
            recipes[0].from_expert = from_expert
    for item in recipes:
        if len(recipes) > 1:
            err.print(f"[bold]expert {item.name}[/bold]")
        try:
            folder = run_training(item, resume=resume, console=console)
        except Interrupted as exc:
            err.print(f"{exc}", markup=False)
            raise typer.Exit(130) from None
        out.print(str(folder), markup=False, highlight=False)


def export(
    expert: Annotated[Path, typer.Argument(help="Expert directory.")],
    merge: Annotated[
        Path | None, typer.Option("--merge", help="Write base + adapter merged to this folder.")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="The base model, if moved since training.")
    ] = None,
) -> None:
    """Export an expert (for now: merged into its base as a HF folder)."""
    from domainlm.train.export import merge_expert

    if merge is None:
        raise DomainLMError("nothing to export: pass --merge OUT")
    folder = merge_expert(expert, merge, base)
    out.print(str(folder), markup=False, highlight=False)
