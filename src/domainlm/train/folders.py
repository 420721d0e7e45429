"""Where a run writes, and what it may touch: the output folder, the run's work folder
`EXPERT.partial/`, and a finished expert that a continuation trains further.

A continuation of a finished expert works in `EXPERT.partial/` too, on a copy of the
expert's checkpoints and metrics; the expert itself stays as it is, usable, until the
continued one replaces it in one step (`checkpoint.publish_folder`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.console import Console

from domainlm.errors import DomainLMError
from domainlm.expert import METRICS_FILE, check_expert, partial_folder, read_metrics
from domainlm.train import checkpoint as ckpt
from domainlm.train.batching import file_hash
from domainlm.train.recipe import Recipe
from domainlm.train.runs import check_continuation, data_changes, recipe_changes


def check_output_dir(folder: Path) -> None:
    """Refuse an output_dir that cannot hold experts, before anything is loaded.

    Raises:
        DomainLMError: `folder` is a file, lies under a file, or cannot be written.
    """
    if folder.exists() and not folder.is_dir():
        raise DomainLMError(f"output_dir: {folder} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DomainLMError(f"output_dir: {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DomainLMError(f"output_dir: {folder}: cannot write in {existing}")


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DomainLMError(f"cannot create {folder}: {exc.strerror or exc}") from None


def check_new(expert: Path, resume: bool) -> bool:
    """Refuse to overwrite anything where no finished expert is. True when `expert` holds
    an unfinished run of an earlier version (working files in the expert folder), which
    --resume moves to EXPERT.partial and finishes."""
    work = partial_folder(expert)
    old_run = (expert / "checkpoints").is_dir() or (expert / METRICS_FILE).is_file()
    if old_run and work.exists():
        raise DomainLMError(f"{expert} and {work} both hold an unfinished run: remove one")
    empty = expert.is_dir() and not any(expert.iterdir())
    if expert.exists() and not (old_run or empty):
        raise DomainLMError(
            f"{expert}: exists and is not an expert: remove it or pick another name"
        )
    if not resume and (old_run or ckpt.checkpoints(work / "checkpoints")):
        where = expert if old_run else work
        raise DomainLMError(f"{where}: holds an unfinished run: pass --resume to continue it")
    return old_run


def continue_finished(recipe: Recipe, expert: Path, resume: bool, console: Console) -> bool:
    """Whether to train the finished expert `expert` further (False: it is already trained
    as `recipe` asks). A continuation gets a work folder holding the expert's checkpoints
    and metrics, unless one from an interrupted continuation is there to resume.

    Raises:
        DomainLMError: without --resume; for changes a continuation cannot make; for a
            recipe that changes something but does not ask for more steps.
    """
    card = check_expert(expert)
    steps = int(card.metrics.get("steps") or 0)
    if not resume:
        raise DomainLMError(
            f"{expert}: already holds a trained expert ({steps} steps): pick another name, "
            "or train it further with --resume and a larger optim.max_steps or optim.epochs"
        )
    changes = recipe_changes(card.recipe, recipe.model_dump(mode="json"), data=False)
    now = [
        {"path": str(d.path), "weight": d.weight, "content_hash": _hash(d.path)}
        for d in recipe.datasets
    ]
    data = data_changes([d.model_dump() for d in card.datasets], now)
    if not changes and not data:
        console.print(f"{recipe.name}: already trained ({expert})")
        return False
    check_continuation(str(expert), changes, data)
    longer = {"optim.max_steps", "optim.epochs"} & set(changes)
    last_epoch = (read_metrics(expert / METRICS_FILE) or [{}])[-1].get("epoch", 0)
    if (
        not longer
        or (recipe.optim.max_steps is not None and recipe.optim.max_steps <= steps)
        or (recipe.optim.epochs is not None and recipe.optim.epochs <= last_epoch)
    ):
        asked = (
            f"optim.max_steps={recipe.optim.max_steps}"
            if recipe.optim.max_steps is not None
            else f"optim.epochs={recipe.optim.epochs}"
        )
        raise DomainLMError(
            f"{expert}: already trained for {steps} steps ({last_epoch:g} epochs) and {asked} "
            f"asks for no more (changed: {', '.join(changes)}); to train it further, give "
            "a larger optim.max_steps or optim.epochs"
        )
    source = ckpt.step_dir(expert / "checkpoints", steps)
    if not (source / ckpt.STATE_FILE).is_file():
        raise DomainLMError(
            f"{expert}: no checkpoint of its last step ({source.name}) to continue from; "
            f"start a new expert from its adapter: `train RECIPE name=NEW --from {expert}`"
        )
    work = partial_folder(expert)
    ongoing = ckpt.checkpoints(work / "checkpoints")
    if ongoing and ongoing[-1][0] > steps:
        return True  # an interrupted continuation: resume it
    shutil.rmtree(work, ignore_errors=True)
    copy_run(expert, work)
    return True


def _hash(path: Path) -> str:
    if not path.is_file():
        raise DomainLMError(f"datasets: {path}: no such file")
    return file_hash(path)


def copy_run(expert: Path, work: Path) -> None:
    """`work` with `expert`'s checkpoints (hard links where the file system allows: a
    checkpoint is never written again) and a copy of its metrics (appended to)."""
    staging = work.with_name(f".{work.name}.copy")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(expert / "checkpoints", staging / "checkpoints", copy_function=_link)
        shutil.copyfile(expert / METRICS_FILE, staging / METRICS_FILE)
        os.replace(staging, work)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DomainLMError(f"cannot copy {expert}'s checkpoints to {work}: {exc}") from None


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
