"""Run a synth recipe: plan every generator's items, make the rows of those not yet made
(the teacher's requests `concurrency` at a time), then check every row and write the set.

Output folder:
- `items.jsonl`: one line per finished item (its rows before checks, its token usage, or
  its error), appended as items finish; a run stopped by Ctrl-C, a crash or a kill keeps
  every complete line, and `resume` makes only the items missing or failed (no
  duplicates: a key is made once; a line cut off by the stop is dropped);
- `data.jsonl`: the rows that passed every check, Conversation JSONL that `domainlm train`
  takes as it is (provenance in each row's `meta`), rewritten whole at the end of a run;
- `rejected.jsonl`: the rows a check removed, each with the check and the reason;
- `report.json` / `report.md`: per generator and per check, tokens, requests, retries,
  cost, the items that failed and why, with examples;
- `run.json`: the recipe as run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.eval.run import read_results
from domainlm.io import append_jsonl, atomic_write, write_jsonl
from domainlm.synth.checks import FILTERS, apply_checks
from domainlm.synth.generators import Context, Item, make_generator
from domainlm.synth.recipe import SynthRecipe
from domainlm.synth.report import markdown
from domainlm.synth.teacher import Teacher, TeacherError, Usage

ITEMS, DATA, REJECTED = "items.jsonl", "data.jsonl", "rejected.jsonl"
#: What a resumed run must share with the run it continues (the teacher's URL, its
#: concurrency and the checks may change in between; the checks run again on every row).
SAME_RUN = ("kb", "seed", "generators")


def synthesise(
    recipe: SynthRecipe,
    out: Path | None = None,
    limit: int | None = None,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
    teacher: Teacher | None = None,
) -> dict[str, Any]:
    """Run `recipe` into `out` (default: its own); returns the report.

    Args:
        limit: at most N items per generator (a trial run; a later run without it, with
            `resume`, makes the rest).
        teacher: a Teacher to use instead of one made from the recipe (tests).

    Raises:
        DomainLMError: a recipe naming a missing KB, documents or file, an empty source,
            an unreachable teacher, an output folder already used without `resume`.
    """
    from domainlm.kb.base import KnowledgeBase

    out = out or recipe.output()
    items_path = out / ITEMS
    if items_path.exists() and not resume:
        raise DomainLMError(
            f"{out} holds a synth run: pass --resume to continue it, or another --out"
        )
    _check_same_run(out, recipe, resume)
    kb = KnowledgeBase.open(recipe.path(recipe.kb)) if recipe.kb else None
    generators = [make_generator(spec) for spec in recipe.generators]
    ctx = Context(recipe, kb)
    planned: list[tuple[Any, Item]] = []
    for generator in generators:
        items = generator.plan(ctx)
        planned += [(generator, item) for item in items[:limit]]
    out.mkdir(parents=True, exist_ok=True)
    lines = read_results(items_path)
    done = {line["key"] for line in lines if "error" not in line}
    todo = [(g, i) for g, i in planned if i.key not in done]
    if any(g.needs_teacher for g, _ in todo):
        if teacher is None:
            assert recipe.teacher is not None  # the recipe's validator says so
            teacher = Teacher(recipe.teacher, os.environ.get(recipe.teacher.api_key_env))
        teacher.check()
    ctx.teacher = teacher
    _write_run(out, recipe)
    started = time.perf_counter()
    total, finished = len(planned), len(planned) - len(todo)
    if progress:
        progress(finished, total)
    try:
        concurrency = recipe.teacher.concurrency if recipe.teacher else 1
        for line in append_jsonl(items_path, _made(ctx, todo, concurrency)):
            lines.append(line)
            finished += 1
            if progress:
                progress(finished, total)
    finally:
        if teacher is not None:
            teacher.close()
    keys = {item.key for _, item in planned}
    latest: dict[str, dict[str, Any]] = {
        line["key"]: line for line in lines if line["key"] in keys
    }  # a retry's last
    return _finish(recipe, out, kb, planned, latest, time.perf_counter() - started)


def _made(ctx: Context, todo: list[tuple[Any, Item]], concurrency: int) -> Any:
    """A line per item, as items finish: the teacher's items `concurrency` at a time in
    threads, the others (statute Q&A) in this thread."""
    local = [(g, i) for g, i in todo if not g.needs_teacher]
    remote = [(g, i) for g, i in todo if g.needs_teacher]
    for generator, item in local:
        yield _one(ctx, generator, item)
    if not remote:
        return
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="synth")
    pending: set[Future[dict[str, Any]]] = set()
    queue = iter(remote)
    try:
        while True:
            while len(pending) < 2 * concurrency:
                nxt = next(queue, None)
                if nxt is None:
                    break
                pending.add(pool.submit(_one, ctx, *nxt))
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    finally:  # Ctrl-C: the queued items are not started; those in flight are abandoned
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _one(ctx: Context, generator: Any, item: Item) -> dict[str, Any]:
    usage = Usage()
    line: dict[str, Any] = {"key": item.key, "generator": item.generator}
    try:
        line["rows"] = generator.make(item, ctx, usage)
    except TeacherError as exc:
        line["error"], line["kind"] = str(exc), exc.kind
        if exc.raw is not None:
            line["raw"] = exc.raw[:2000]
    except DomainLMError as exc:
        line["error"], line["kind"] = str(exc), "error"
    line["usage"] = usage.to_dict()
    return line


def _finish(
    recipe: SynthRecipe,
    out: Path,
    kb: Any,
    planned: list[tuple[Any, Item]],
    latest: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    made = [row for _, item in planned for row in latest.get(item.key, {}).get("rows", [])]
    kept, tally, rejected = apply_checks(made, recipe.checks, kb)
    usage = Usage()
    for line in latest.values():
        usage.add(line.get("usage", {}))
    per: dict[str, Counter[str]] = {}
    for _, item in planned:
        counts = per.setdefault(item.generator, Counter())
        counts["items"] += 1
        made_line = latest.get(item.key)
        if made_line is None:
            counts["not_made"] += 1
        elif "error" in made_line:
            counts["failed"] += 1
            counts[f"failed_{made_line.get('kind', 'error')}"] += 1
        else:
            counts["rows"] += len(made_line["rows"])
    for row in kept:
        per[row["record"]["meta"]["generator"]]["kept"] += 1
    failures = [{"item": line["key"], "kind": line.get("kind"), "error": line["error"]}
                for line in latest.values() if "error" in line]  # fmt: skip
    report = {
        "name": recipe.name,
        "teacher": recipe.teacher.model_dump(include={"url", "model"}) if recipe.teacher else None,
        "generators": {name: dict(counts) for name, counts in per.items()},
        "rows": len(made),
        "kept": len(kept),
        "removed": {check: tally.removed.get(check, 0) for check in FILTERS},
        "examples": tally.examples,
        "citations": {"verdicts": dict(tally.verdicts), "repaired": tally.repaired},
        "usage": usage.to_dict(),
        "cost": round(usage.cost(recipe.teacher.price), 6) if recipe.teacher else 0.0,
        "failures": failures[:20],
        "failed": len(failures),
        "seconds": round(seconds, 2),
        "data": str(out / DATA),
    }
    write_jsonl(out / DATA, (row["record"] for row in kept))
    write_jsonl(out / REJECTED, rejected)
    with atomic_write(out / "report.json") as handle:
        handle.write(json.dumps(report, ensure_ascii=False, indent=2))
    with atomic_write(out / "report.md") as handle:
        handle.write(markdown(report))
    return report


def _check_same_run(out: Path, recipe: SynthRecipe, resume: bool) -> None:
    path = out / "run.json"
    if not resume or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))["recipe"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        return  # a run.json we cannot read says nothing either way
    now = recipe.model_dump(mode="json")
    changed = [key for key in SAME_RUN if before.get(key) != now.get(key)]
    if changed:
        raise DomainLMError(
            f"{out}: the recipe's {', '.join(changed)} changed since this run began; "
            "resume with the same recipe, or start a new run with another --out"
        )


def _write_run(out: Path, recipe: SynthRecipe) -> None:
    with atomic_write(out / "run.json") as handle:
        handle.write(json.dumps({"recipe": recipe.model_dump(mode="json")}, ensure_ascii=False,
                                indent=2))  # fmt: skip
