"""What each task asks the models and how an answer is scored.

A task turns its data files into `Unit`s: one question for one scorer, with the request to
send (a chat to generate from, or a prompt and continuations to score) and a function that
scores the model's answer. The runner sends every unit to every model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import SourceError
from domainlm.eval import exam, text
from domainlm.eval.suite import ExamTask, TextTask


@dataclass
class Unit:
    task: str
    scorer: str  # "loglik", "generate" (exams), "text"
    id: str
    prompt: str  # what the model is asked (the user message, or the scored context)
    reference: str
    group: str = ""  # a subject, for per-group accuracy
    continuations: list[str] = field(default_factory=list)  # loglik
    system: str | None = None
    max_new_tokens: int = 256
    # (prediction, or loglik scores) -> (what the model answered, score dict); a score
    # dict with "correct" is a right/wrong item (flips are counted for those).
    score: Callable[[Any], tuple[str, dict[str, float]]] = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def key(self) -> str:
        return f"{self.task}\t{self.scorer}\t{self.id}"

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]


def units(task: Any, folder: Path, seed: int) -> list[Unit]:
    """The units of one task."""
    if isinstance(task, ExamTask):
        return _exam_units(task, folder, seed)
    if isinstance(task, TextTask):
        return _text_units(task, folder)
    raise TypeError(f"unknown task {task!r}")  # the suite's types are all handled above


def _exam_units(task: ExamTask, folder: Path, seed: int) -> list[Unit]:
    questions = [q for path in task.files(folder) for q in exam.read_exam(path)]
    shots_by_subject: dict[str, list[exam.Question]] = {}
    if task.shots:
        if task.dev is None:
            raise SourceError(task.name, None, "shots need a `dev` split to take them from")
        dev = ExamTask(name=task.name, type="exam", data=task.dev)
        for path in dev.files(folder):
            shots_by_subject.setdefault(exam.subject_of(path), []).extend(exam.read_exam(path))
    if task.limit:
        questions = random.Random(seed).sample(questions, min(task.limit, len(questions)))
    out = []
    for q in questions:
        shots = [s for s in shots_by_subject.get(q.subject, []) if s.multi == q.multi][: task.shots]
        prompt = exam.prompt(q, shots)
        letters = "".join(q.options)
        for scorer in task.scorers:
            if scorer == "loglik" and q.multi:
                continue  # a set of letters has no single continuation to score
            out.append(
                Unit(
                    task.name,
                    scorer,
                    f"{q.subject}/{q.id}",
                    prompt,
                    q.answer,
                    group=q.subject,
                    continuations=[f" {letter}" for letter in letters]
                    if scorer == "loglik"
                    else [],
                    system=task.system,
                    max_new_tokens=task.max_new_tokens,
                    score=_exam_scorer(scorer, q.answer, letters),
                )
            )
    return out


def _exam_scorer(
    scorer: str, answer: str, letters: str
) -> Callable[[Any], tuple[str, dict[str, float]]]:
    def by_loglik(scores: list[float]) -> tuple[str, dict[str, float]]:
        best = letters[max(range(len(scores)), key=scores.__getitem__)]
        return best, {"correct": float(best == answer)}

    def by_reading(reply: str) -> tuple[str, dict[str, float]]:
        picked = exam.read_choice(reply, letters)
        return picked or "", {"correct": float(picked == answer), "unread": float(picked is None)}

    return by_loglik if scorer == "loglik" else by_reading


def _text_units(task: TextTask, folder: Path) -> list[Unit]:
    out = []
    files = task.files(folder)
    for path in files:
        for item in text.read_text_items(_records(path), task, str(path)):
            if len(files) > 1:
                item["id"] = f"{path.stem}/{item['id']}"

            def score(
                reply: str, reference: str = item["reference"]
            ) -> tuple[str, dict[str, float]]:
                return reply, text.text_scores(reply, reference)

            out.append(
                Unit(
                    task.name,
                    "text",
                    item["id"],
                    item["prompt"],
                    item["reference"],
                    system=task.system,
                    max_new_tokens=task.max_new_tokens,
                    score=score,
                )
            )
    return out[: task.limit] if task.limit else out


def _records(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON list, JSONL or CSV file."""
    import csv

    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(str(path), None, f"not UTF-8 text ({exc.reason})") from None
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(raw.splitlines()))
    if path.suffix.lower() == ".jsonl":
        rows = []
        for line_no, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SourceError(str(path), line_no, f"not JSON: {exc.msg}") from None
        return rows
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SourceError(str(path), exc.lineno, f"not JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise SourceError(str(path), None, "expected a JSON list of items")
    return data
