"""Run a suite on models: every unit of every task to every model, results appended as
they come, then the summary and the reports.

Output folder: `results.jsonl` (one line per unit and model: prompt, prediction, scores,
or the item's error), `run.json` (suite, models, backend), `summary.json`, `report.md`,
`report.html`. A run stopped by Ctrl-C keeps every finished line; `resume=True` skips the
units already answered (a line cut off by the stop is dropped; items that failed — an
endpoint that was down — are tried again, and their last answer counts).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.eval.models import Chat, Choice, Models
from domainlm.eval.suite import Suite
from domainlm.eval.summary import KB_MODEL
from domainlm.eval.tasks import Unit, units
from domainlm.io import append_jsonl, atomic_write

RESULTS = "results.jsonl"


def plan(suite: Suite) -> list[Unit]:
    """Every unit of the suite, task by task."""
    return [unit for task in suite.tasks for unit in units(task, suite.folder, suite.seed)]


def read_results(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a results file; a last line cut off by a stop is removed
    from the file."""
    if not path.exists():
        return []
    rows, good = [], 0
    with path.open("rb") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not line.endswith(b"\n"):
                rows.pop()
                break
            good += len(line)
    if good != path.stat().st_size:
        with path.open("rb+") as handle:
            handle.truncate(good)
    return rows


def run_suite(
    suite: Suite,
    models: Models,
    names: list[str],
    out: Path,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `suite` on the models `names`; returns every result row (old and new).

    Raises:
        DomainLMError: an unknown model, results already in `out` without `resume`, a
            suite whose data does not load.
    """
    unknown = [n for n in names if n not in models.names]
    if unknown:
        raise DomainLMError(
            f"unknown model {', '.join(unknown)} (choose from {', '.join(models.names)})"
        )
    work = plan(suite)
    results_path = out / RESULTS
    if results_path.exists() and not resume:
        raise DomainLMError(
            f"{out} already holds results: pass --resume to continue that run, or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    rows = read_results(results_path)
    done = {(r["key"], r["model"]) for r in rows if "error" not in r}  # errors are retried
    _write_run(out, suite, models, names)
    every = [(u, m) for u in work for m in (names if u.needs_model else [KB_MODEL])]
    todo = [(u, m) for u, m in every if (u.key, m) not in done]
    total, finished = len(every), len(every) - len(todo)
    if progress:
        progress(finished, total)
    for row in append_jsonl(results_path, _answers(models, todo)):
        rows.append(row)
        finished += 1
        if progress:
            progress(finished, total)
    latest = {(r["key"], r["model"]): r for r in rows}  # a retried item's last answer
    return list(latest.values())


def _answers(models: Models, todo: list[tuple[Unit, str]]) -> Iterator[dict[str, Any]]:
    """A result row per (unit, model): log-likelihood units first (batched forward
    passes), then generated answers (through the engine, all models mixed)."""
    for unit, model in todo:
        if not unit.needs_model:
            prediction, score = unit.score(unit.prompt)
            yield _row(unit, model, prediction, score)
    todo = [(u, m) for u, m in todo if u.needs_model]
    scored = [(u, m) for u, m in todo if u.scorer == "loglik"]
    assisted = [(u, m) for u, m in todo if u.toolsets]
    chats = [(u, m) for u, m in todo if u.scorer != "loglik" and not u.toolsets]
    for start in range(0, len(scored), 256):  # a batch of rows written as it is done
        part = scored[start : start + 256]
        try:
            scores = models.loglik([Choice(m, u.prompt, u.continuations) for u, m in part])
        except DomainLMError as exc:
            for unit, model in part:
                yield _row(unit, model, error=str(exc))
            continue
        for (unit, model), option_scores in zip(part, scores, strict=True):
            prediction, score = unit.score(option_scores)
            yield _row(unit, model, prediction, score, option_scores)
    for toolsets in sorted({tuple(u.toolsets) for u, _ in assisted}):
        group = [(u, m) for u, m in assisted if tuple(u.toolsets) == toolsets]
        jobs = [Chat(m, u.messages(), u.max_new_tokens) for u, m in group]
        yield from _replies(group, models.assist(jobs, list(toolsets)))
    jobs = [Chat(m, u.messages(), u.max_new_tokens, u.tools) for u, m in chats]
    yield from _replies(chats, models.generate(jobs))


def _replies(
    work: list[tuple[Unit, str]], replies: Iterator[tuple[int, Any]]
) -> Iterator[dict[str, Any]]:
    for index, reply in replies:
        unit, model = work[index]
        if isinstance(reply, Exception):
            yield _row(unit, model, error=str(reply))
            continue
        try:
            scored: tuple[Any, ...] = unit.score(reply)
        except DomainLMError as exc:  # a judge down or off-format: the item's error
            yield {**_row(unit, model, error=str(exc)), "reply": reply.text}
            continue
        row = _row(unit, model, scored[0], scored[1], raw=reply.text)
        if reply.calls:
            row["calls"] = reply.calls
        for more in scored[2:]:
            row.update(more)  # a judge's prompt and raw verdict
        yield row


def _row(
    unit: Unit,
    model: str,
    prediction: str | None = None,
    score: dict[str, float] | None = None,
    option_scores: list[float] | None = None,
    raw: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": unit.key,
        "task": unit.task,
        "scorer": unit.scorer,
        "id": unit.id,
        "group": unit.group,
        "model": model,
        "prompt": unit.prompt,
        "reference": unit.reference,
    }
    if error is not None:
        row["error"] = error
        return row
    row["prediction"] = prediction
    row["score"] = score
    if option_scores is not None:
        row["option_logprobs"] = {
            c.strip(): round(s, 6) for c, s in zip(unit.continuations, option_scores, strict=True)
        }
    if raw is not None and raw != prediction:
        row["reply"] = raw
    return row


def _write_run(out: Path, suite: Suite, models: Models, names: list[str]) -> None:
    info = {
        "suite": suite.model_dump(mode="json"),
        "models": names,
        "backend": models.describe(),
    }
    with atomic_write(out / "run.json") as handle:
        handle.write(json.dumps(info, ensure_ascii=False, indent=2))
