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
from domainlm.eval import compute, exam, text, toolcalls
from domainlm.eval.suite import (
    CitationTask,
    ComputeTask,
    ExamTask,
    JudgeTask,
    RetrievalTask,
    TextTask,
    ToolCallTask,
)


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
    tools: list[dict[str, Any]] | None = None  # OpenAI tool specs offered (tool-call tasks)
    toolsets: list[str] = field(default_factory=list)  # DomainLM toolsets run for the model
    history: list[dict[str, Any]] | None = None  # the whole prompt conversation, if given
    needs_model: bool = True  # False: scored once, whatever the models (retrieval)
    # (the Reply, or loglik scores) -> (what the model answered, score dict); a score
    # dict with "correct" is a right/wrong item (flips are counted for those).
    score: Callable[[Any], tuple[str, dict[str, float]]] = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def key(self) -> str:
        return f"{self.task}\t{self.scorer}\t{self.id}"

    def messages(self) -> list[dict[str, Any]]:
        if self.history is not None:
            return self.history
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]


def units(task: Any, folder: Path, seed: int) -> list[Unit]:
    """The units of one task."""
    if isinstance(task, ExamTask):
        return _exam_units(task, folder, seed)  # the only one that samples
    return BUILDERS[type(task)](task, folder)


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
        choices = exam.letter_sets(letters) if q.multi else list(letters)
        for scorer in task.scorers:
            out.append(
                Unit(
                    task.name,
                    scorer,
                    f"{q.subject}/{q.id}",
                    prompt,
                    q.answer,
                    group=q.subject,
                    continuations=[f" {c}" for c in choices] if scorer == "loglik" else [],
                    system=task.system,
                    max_new_tokens=task.max_new_tokens,
                    score=_exam_scorer(scorer, q.answer, letters, choices),
                )
            )
    return out


def _exam_scorer(
    scorer: str, answer: str, letters: str, choices: list[str]
) -> Callable[[Any], tuple[str, dict[str, float]]]:
    def by_loglik(scores: list[float]) -> tuple[str, dict[str, float]]:
        best = choices[max(range(len(scores)), key=scores.__getitem__)]
        return best, {"correct": float(best == answer)}

    def by_reading(reply: Any) -> tuple[str, dict[str, float]]:
        picked = exam.read_choice(reply.text, letters)
        return picked or "", {"correct": float(picked == answer), "unread": float(picked is None)}

    return by_loglik if scorer == "loglik" else by_reading


def _text_units(task: TextTask, folder: Path) -> list[Unit]:
    out = []
    files = task.files(folder)
    for path in files:
        fields = (task.prompt_field, task.instruction_field, task.reference_field)
        for item in text.read_text_items(_records(path), str(path), *fields):
            if len(files) > 1:
                item["id"] = f"{path.stem}/{item['id']}"

            def score(
                reply: Any, reference: str = item["reference"]
            ) -> tuple[str, dict[str, float]]:
                return reply.text, text.text_scores(reply.text, reference)

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


def _compute_units(task: ComputeTask, folder: Path) -> list[Unit]:
    out = []
    for path in task.files(folder):
        for line, row in enumerate(_records(path), 1):
            if not isinstance(row, dict):
                raise SourceError(str(path), line, "expected an object")
            question = str(row.get(task.question_field) or "").strip()
            if not question:
                raise SourceError(str(path), line, "missing or empty", task.question_field)
            formula = str(row.get(task.formula_field) or "").strip()
            try:
                value = compute.formula_value(formula) if formula else None
            except ValueError as exc:
                raise SourceError(
                    str(path), line, f"not arithmetic: {exc}", task.formula_field
                ) from None
            reference = (
                compute.Stated(value)
                if value is not None
                else compute.reference_number(row.get(task.answer_field))
            )
            if reference is None:
                raise SourceError(
                    str(path), line, "no number in the reference answer", task.answer_field
                )
            out.append(
                Unit(
                    task.name,
                    "tools" if task.tools else "computation",
                    str(row.get("id", line)),
                    question,
                    f"{reference.value:g}{'%' if reference.percent else ''}",
                    system=task.system,
                    max_new_tokens=task.max_new_tokens,
                    toolsets=list(task.tools),
                    score=_compute_scorer(reference, value, task.tolerance),
                )
            )
    return out[: task.limit] if task.limit else out


def _compute_scorer(
    reference: compute.Stated, formula: float | None, tolerance: float
) -> Callable[[Any], tuple[str, dict[str, float]]]:
    def score(reply: Any) -> tuple[str, dict[str, float]]:
        stated = compute.final_number(reply.text)
        shown = "" if stated is None else f"{stated.value:g}{'%' if stated.percent else ''}"
        scores = {
            "correct": float(stated is not None and compute.close(stated, reference, tolerance)),
            "unread": float(stated is None),
        }
        if formula is not None:
            scores["formula"] = float(compute.writes_formula(reply.text, formula, tolerance))
        return shown, scores

    return score


def _toolcall_units(task: ToolCallTask, folder: Path) -> list[Unit]:
    out = []
    for path in task.files(folder):
        source = task.source
        if source == "auto":
            source = "conversation" if path.suffix.lower() == ".jsonl" else "toolalpaca"
        rows: Any = _records(path)
        if source == "toolalpaca":
            items = toolcalls.read_toolalpaca(rows, str(path))
        else:
            items = toolcalls.read_conversations(rows, str(path))
        for item in items:
            gold = item["gold"]
            out.append(
                Unit(
                    task.name,
                    "toolcall",
                    item["id"],
                    item["messages"][-1].get("content") or "",
                    json.dumps(gold, ensure_ascii=False),
                    max_new_tokens=task.max_new_tokens,
                    tools=item["tools"],
                    history=item["messages"],
                    score=_call_scorer(gold),
                )
            )
    return out[: task.limit] if task.limit else out


def _citation_units(task: CitationTask, folder: Path) -> list[Unit]:
    kb_folder = task.kb_folder(folder)
    opened: list[Any] = []  # the KB, opened when the first answer is scored

    def score(reply: Any) -> tuple[str, dict[str, float]]:
        from domainlm.kb.base import KnowledgeBase
        from domainlm.kb.verdicts import CURRENT, NO_ARTICLE, UNKNOWN_LAW

        if not opened:
            opened.append(KnowledgeBase.open(kb_folder))
        cited = opened[0].verify(reply.text, suggest=False)
        checked = [c for c in cited if c.verdict != UNKNOWN_LAW]
        shown = "; ".join(f"{c.text} -> {c.verdict}" for c in cited)
        return shown, {
            "honest": float(all(c.verdict == CURRENT for c in checked)),
            "cites": float(bool(checked)),
            "fabricated": float(any(c.verdict == NO_ARTICLE for c in checked)),
            "outdated": float(any(c.verdict not in (CURRENT, NO_ARTICLE) for c in checked)),
            "unchecked": float(len(cited) > len(checked)),  # a law the KB does not hold
        }

    fields = (task.prompt_field, task.instruction_field, None)
    out = []
    for path in task.files(folder):
        for item in text.read_text_items(_records(path), str(path), *fields):
            out.append(
                Unit(
                    task.name,
                    "citations",
                    item["id"],
                    item["prompt"],
                    "",
                    system=task.system,
                    max_new_tokens=task.max_new_tokens,
                    score=score,
                )
            )
    return out[: task.limit] if task.limit else out


def _retrieval_units(task: RetrievalTask, folder: Path) -> list[Unit]:
    from domainlm.kb.evaluate import KS, read_qrels

    kb_folder = task.kb_folder(folder)
    opened: list[Any] = []

    def scorer(relevant: set[tuple[str, int]]) -> Callable[[Any], tuple[str, dict[str, float]]]:
        def score(query: Any) -> tuple[str, dict[str, float]]:
            from domainlm.kb.base import KnowledgeBase

            if not opened:
                opened.append(KnowledgeBase.open(kb_folder))
            kb = opened[0]
            wanted = {(kb.laws.resolve(law), number) for law, number in relevant}
            found = [(c.law, c.article_num) for c in kb.search(query, max(KS))]
            ranks = [i for i, hit in enumerate(found) if hit in wanted]
            first = ranks[0] if ranks else None
            scores = {f"recall@{k}": float(first is not None and first < k) for k in KS}
            scores["rr"] = 1 / (first + 1) if first is not None else 0.0
            return "; ".join(f"{law} {n}" for law, n in found[:3]), scores

        return score

    out = []
    for path in task.files(folder):
        for n, qrel in enumerate(read_qrels(path), 1):
            relevant = "; ".join(f"{law} {number}" for law, number in sorted(qrel.relevant))
            out.append(
                Unit(
                    task.name,
                    "retrieval",
                    f"{path.stem}/{n}",
                    qrel.query,
                    relevant,
                    needs_model=False,
                    score=scorer(qrel.relevant),
                )
            )
    return out[: task.limit] if task.limit else out


def _judge_units(task: JudgeTask, folder: Path) -> list[Unit]:
    import os

    from domainlm.eval import judge

    settings = task.judge
    criteria = settings.criteria or judge.DISC_CRITERIA
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    made: list[judge.Judge] = []  # the client, made when the first answer is judged

    def scorer(question: str, reference: str) -> Callable[[Any], Any]:
        def score(reply: Any) -> tuple[str, dict[str, float], dict[str, Any]]:
            if not made:
                made.append(
                    judge.Judge(settings.url, settings.model, key, criteria, settings.scale)
                )
            prompt, raw, scores = made[0](question, reply.text, reference)
            summary = judge.scores_summary(scores, settings.scale)
            return reply.text, summary, {"judge_prompt": prompt, "verdict": raw}

        return score

    fields = (task.prompt_field, task.instruction_field, task.reference_field)
    out = []
    for path in task.files(folder):
        for item in text.read_text_items(_records(path), str(path), *fields):
            out.append(
                Unit(
                    task.name,
                    "judge",
                    item["id"],
                    item["prompt"],
                    item["reference"],
                    system=task.system,
                    max_new_tokens=task.max_new_tokens,
                    score=scorer(item["prompt"], item["reference"]),
                )
            )
    return out[: task.limit] if task.limit else out


def _call_scorer(gold: dict[str, Any]) -> Callable[[Any], tuple[str, dict[str, float]]]:
    def score(reply: Any) -> tuple[str, dict[str, float]]:
        return toolcalls.score_call(reply.calls, gold)

    return score


#: The units of each task type but exams, from its data files.
BUILDERS: dict[type, Callable[[Any, Path], list[Unit]]] = {
    TextTask: _text_units,
    ComputeTask: _compute_units,
    ToolCallTask: _toolcall_units,
    CitationTask: _citation_units,
    RetrievalTask: _retrieval_units,
    JudgeTask: _judge_units,
}


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
