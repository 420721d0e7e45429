"""Multiple-choice exams: reading C-Eval/CMMLU/FinEval files, prompts, reading answers.

Files: CSV with `question, A, B, C, D[, E, F], answer[, id, explanation]` (one subject per
file, named after the file: `accounting_dev.csv` -> accounting) or JSON, a list of objects
with the same keys. An answer of several letters (`BD`) makes a multi-answer item.

The prompt is C-Eval's: a header naming the subject, worked examples from the dev split,
then `question\\nA. ...\\n答案：`. The log-likelihood scorer compares the option letters as
continuations of that prompt (` A`, ` B` ..., as lm-evaluation-harness's C-Eval task); for a
multi-answer item the continuations are every non-empty set of letters written as the worked
examples write them (` A`, ` AB`, ... ` ABCD`: 15 for four options) and the most likely
string is the model's answer (summed log-probabilities, as lm-evaluation-harness's `acc`);
the generation scorer reads the letters from the model's own answer (`read_choice`).
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from domainlm.errors import SourceError

LETTERS = "ABCDEF"


@dataclass
class Question:
    id: str
    subject: str
    question: str
    options: dict[str, str]  # letter -> text
    answer: str  # the right letters, sorted ("B", "BD")
    explanation: str = ""

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1


def subject_of(path: Path) -> str:
    stem = path.stem
    for suffix in ("_dev", "_val", "_test", "-dev", "-val", "-test"):
        stem = stem.removesuffix(suffix)
    return stem


def read_exam(path: Path) -> list[Question]:
    """The questions in one exam file.

    Raises:
        SourceError: no answer column, fewer than two options, an answer that is not
            among the options, an empty file.
    """
    subject = subject_of(path)
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceError(str(path), None, f"not a JSON exam file: {exc}") from None
        if not isinstance(rows, list):
            raise SourceError(str(path), None, "expected a JSON list of questions")
        numbered = [(i + 1, row) for i, row in enumerate(rows)]
    else:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            try:
                numbered = [(i + 2, row) for i, row in enumerate(csv.DictReader(handle))]
            except (UnicodeDecodeError, csv.Error) as exc:
                raise SourceError(str(path), None, f"not a CSV exam file: {exc}") from None
    if not numbered:
        raise SourceError(str(path), None, "no questions")
    return [_question(path, line, row, subject) for line, row in numbered]


def _question(path: Path, line: int, row: object, subject: str) -> Question:
    if not isinstance(row, dict):
        raise SourceError(str(path), line, "expected an object with question, A, B, ... answer")
    if "answer" not in row:
        raise SourceError(str(path), line, "no `answer` column", "answer")
    question = str(row.get("question") or "").strip()
    if not question:
        raise SourceError(str(path), line, "empty question", "question")
    options = {
        k: str(row[k]).strip()
        for k in LETTERS
        if row.get(k) not in (None, "") and str(row[k]).strip()
    }
    if len(options) < 2:
        raise SourceError(str(path), line, "fewer than two options (columns A, B, ...)")
    answer = "".join(
        sorted(set(unicodedata.normalize("NFKC", str(row["answer"])).upper()) - set(" ,、"))
    )
    if not answer or any(letter not in options for letter in answer):
        raise SourceError(
            str(path),
            line,
            f"answer {row['answer']!r} is not among the options {''.join(options)}",
            "answer",
        )
    return Question(
        id=str(row.get("id", line)),
        subject=subject,
        question=question,
        options=options,
        answer=answer,
        explanation=str(row.get("explanation") or "").strip(),
    )


def letter_sets(letters: str) -> list[str]:
    """Every non-empty set of the letters, each sorted: "ABC" -> A, B, C, AB, AC, BC, ABC."""
    from itertools import combinations

    return ["".join(c) for size in range(1, len(letters) + 1) for c in combinations(letters, size)]


def header(subject: str, multi: bool) -> str:
    kind = "多项选择题" if multi else "单项选择题"
    return f"以下是中国关于{subject.replace('_', ' ')}考试的{kind}，请选出其中的正确答案。\n\n"


def body(question: Question) -> str:
    """The question and its options, ending where the answer goes."""
    options = "".join(f"\n{letter}. {text}" for letter, text in question.options.items())
    return f"{question.question}{options}\n答案："


def prompt(question: Question, shots: list[Question]) -> str:
    """The whole prompt: header, worked examples, the question."""
    worked = "".join(f"{body(shot)} {shot.answer}\n\n" for shot in shots)
    return header(question.subject, question.multi) + worked + body(question)


# -- reading the letters from a generated answer ---------------------------------------------
_LIST = r"([A-F](?:\s*[、,，和及与/]?\s*[A-F])*)"
_EXPLICIT = re.compile(
    r"(?:答案|正确答案|正确选项|故选|应选|选择|选项)\s*(?:应该|应当|应)?\s*(?:是|为|选)?\s*[:：]?\s*"
    r"[（(\[【]?\s*" + _LIST + r"(?![A-Za-z])",
    re.IGNORECASE,
)
_CHOOSE = re.compile(r"选\s*[（(\[【]?\s*" + _LIST + r"(?![A-Za-z])", re.IGNORECASE)
_LEADING = re.compile(r"^\s*[（(\[【]?\s*" + _LIST + r"\s*(?:[)）\]】.．、:：,，\s]|$)")
_ALONE = re.compile(r"(?<![A-Za-z])([A-F])(?![A-Za-z])")


def read_choice(text: str, options: str = LETTERS) -> str | None:
    """The letters an answer picks, sorted ("B", "BD"), or None when it picks none.

    Reads "答案是B", "答案：(B)", "故选BD", "B. 说明…", "（B）", "A、C", full-width "Ｂ";
    failing those, the one option letter the answer names, if it names only one.
    """
    text = unicodedata.normalize("NFKC", text)  # full-width letters and brackets
    for pattern in (_EXPLICIT, _CHOOSE, _LEADING):
        found = pattern.search(text)
        if found:
            letters = {c for c in found.group(1).upper() if c in options}
            if letters:
                return "".join(sorted(letters))
    named = {c for c in _ALONE.findall(text) if c in options}
    return named.pop() if len(named) == 1 else None
