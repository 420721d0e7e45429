"""`evaluate`: a suite, models and an output folder in; the run and its reports out."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from domainlm.eval.models import Models
from domainlm.eval.report import html_report, markdown
from domainlm.eval.run import run_suite
from domainlm.eval.suite import Suite
from domainlm.eval.summary import summarise
from domainlm.io import atomic_write


def evaluate(
    suite: Suite,
    models: Models,
    names: list[str],
    out: Path,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the suite on `names` (the first is the reference for deltas and flips) and
    write summary.json, report.md and report.html next to results.jsonl; the summary."""
    rows = run_suite(suite, models, names, out, resume, progress)
    tasks = [task.name for task in suite.tasks]
    regression = {task.name for task in suite.tasks if task.regression}
    summary = {"suite": suite.name, **summarise(rows, names, suite.seed, tasks, regression)}
    title = f"{suite.name}: {', '.join(names)}"
    with atomic_write(out / "summary.json") as handle:
        handle.write(json.dumps(summary, ensure_ascii=False, indent=2))
    with atomic_write(out / "report.md") as handle:
        handle.write(markdown(summary, title))
    with atomic_write(out / "report.html") as handle:
        handle.write(html_report(summary, title))
    return summary


def local_models(
    model: str, experts: Path | None, chat_format: str = "auto", dtype: str = "auto"
) -> Any:
    """The base `model` and every expert under `experts`, on this machine, in `dtype`
    (auto: bf16 where the GPU or CPU computes it fast, else fp32)."""
    import torch

    from domainlm.chat.formats import get_format
    from domainlm.engine.setup import load_pool
    from domainlm.eval.models import LocalModels

    weights = None if dtype == "auto" else getattr(torch, dtype)
    pool = load_pool(model, [experts] if experts else [], dtype=weights)
    return LocalModels(pool, get_format(chat_format, pool.base.tokenizer))


@contextmanager
def progress_bar(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar with ETA on `console` while the block runs; yields the `progress`
    callback `evaluate` takes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)
