"""Generated text against a reference: ROUGE on characters and on jieba words, BLEU-4.

Per item (x100, as LLaMA-Factory prints them):
- `rouge-1/2/l` on jieba words: rouge-chinese's F1 over `" ".join(jieba.cut(text))`, which
  is what LLaMA-Factory's `ComputeSimilarity` reports; `rouge-*-char` the same on characters;
- `bleu-4`: sentence BLEU on characters with NIST smoothing (sacrebleu's `exp`, NLTK's
  `method3`), LLaMA-Factory's definition.
Over a whole task the summary adds sacrebleu's corpus BLEU with its `zh` tokenizer.
"""

from __future__ import annotations

import logging
from typing import Any

# Sentence BLEU without effective order is LLaMA-Factory's (NLTK's) definition: say it once
# here, not as a warning per item.
logging.getLogger("sacrebleu").setLevel(logging.ERROR)

METRICS = (
    "rouge-1",
    "rouge-2",
    "rouge-l",
    "rouge-1-char",
    "rouge-2-char",
    "rouge-l-char",
    "bleu-4",
)


def _words(text: str) -> str:
    """jieba's default cut, as LLaMA-Factory uses it (not the KB's legal dictionary)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return " ".join(w for w in jieba.cut(text) if w.strip())


def _chars(text: str) -> str:
    return " ".join(c for c in text if not c.isspace())


def _rouge(hypothesis: str, reference: str) -> dict[str, float]:
    from rouge_chinese import Rouge

    if not hypothesis.split() or not reference.split():
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    scores = Rouge().get_scores(hypothesis, reference)[0]
    return {name: 100 * float(value["f"]) for name, value in scores.items()}


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """The per-item metrics of `prediction` against `reference`."""
    from sacrebleu.metrics import BLEU

    scores = _rouge(_words(prediction), _words(reference))
    for name, value in _rouge(_chars(prediction), _chars(reference)).items():
        scores[f"{name}-char"] = value
    hypothesis, target = _chars(prediction), _chars(reference)
    if hypothesis and target:
        bleu = BLEU(tokenize="none", smooth_method="exp", effective_order=False)
        scores["bleu-4"] = float(bleu.sentence_score(hypothesis, [target]).score)
    else:
        scores["bleu-4"] = 0.0
    return scores


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU with its Chinese tokenizer."""
    from sacrebleu.metrics import BLEU

    if not predictions:
        return 0.0
    return float(BLEU(tokenize="zh").corpus_score(predictions, [references]).score)


def read_text_items(
    rows: list[dict[str, Any]],
    source: str,
    prompt_field: str,
    instruction_field: str | None,
    reference_field: str | None,
) -> list[dict[str, str]]:
    """(id, prompt, reference) of each row — the instruction, when present, before the
    question; no reference without a `reference_field` — or an error naming the row and
    the field."""
    from domainlm.errors import SourceError

    items = []
    for line, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise SourceError(source, line, "expected an object")
        question = str(row.get(prompt_field) or "").strip()
        if not question:
            raise SourceError(source, line, "missing or empty", prompt_field)
        reference = ""
        if reference_field is not None:
            reference = str(row.get(reference_field) or "").strip()
            if not reference:
                raise SourceError(source, line, "missing or empty", reference_field)
        instruction = str(row.get(instruction_field or "", "") or "").strip()
        prompt = f"{instruction}\n{question}" if instruction else question
        items.append({"id": str(row.get("id", line)), "prompt": prompt, "reference": reference})
    return items
