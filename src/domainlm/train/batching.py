"""Datasets to training batches: tokenize, mix by weight, pack, and cut into micro-batches.

In: the recipe's datasets (any format `domainlm data` reads for `sft`; JSONL with a text
field or plain text for `pt`). Out: `Batch`es whose `targets` are already shifted per
example, so a packed row never predicts one example's first token from another's last.

Packing puts several examples in one row; each example's `position_ids` restart at 0, which
transformers turns into a block-diagonal causal mask (no attention across examples), so
the loss of a packed batch equals the loss of the same examples run one by one.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from domainlm.chat.conversation import Conversation
from domainlm.chat.formats import IGNORE_INDEX, ChatFormat, Rendered
from domainlm.data.pipeline import LoadOptions, load
from domainlm.data.records import read_texts as record_texts
from domainlm.errors import DomainLMError
from domainlm.io import sha256_file


@dataclass
class Batch:
    """One micro-batch, shapes (rows, seq)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    """The token each position must predict, or -100 (already shifted)."""
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    """Only for padded (unpacked) batches; packed ones rely on position_ids."""
    tokens: int
    """Real (non-padding) tokens."""

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


@dataclass
class Dataset:
    """One tokenized dataset of the mix."""

    path: Path
    weight: float
    examples: list[Rendered]
    content_hash: str
    truncated: int = 0


def file_hash(path: Path) -> str:
    """The dataset hash recorded in an expert card."""
    return "sha256:" + sha256_file(path)[:32]


def read_conversations(path: Path, system_prompt: str | None = None) -> list[Conversation]:
    """The conversations of a training or dev file, all valid.

    Raises:
        DomainLMError: naming the first bad record (run `domainlm data validate` for all).
    """
    if path.suffix.lower() in (".csv", ".tsv"):
        raise DomainLMError(
            f"{path}: a CSV/TSV file needs its columns mapped; convert it first: "
            f"domainlm data convert {path} --user COLUMN --assistant COLUMN -o data.jsonl"
        )
    report = load([path], LoadOptions(system_prompt=system_prompt, allow_duplicates=True))
    if report.rejected:
        first = report.rejected[0].lines()[0]
        raise DomainLMError(
            f"{first} ({len(report.rejected)} bad record(s) in {path}; "
            f"`domainlm data validate {path}` lists them)"
        )
    return report.conversations


def render_sft(
    conversations: list[Conversation], chat_format: ChatFormat, max_seq_len: int
) -> tuple[list[Rendered], int]:
    """Rendered examples (cut to `max_seq_len`, those with nothing to train dropped) and
    how many were truncated."""
    examples, truncated = [], 0
    for conversation in conversations:
        rendered = chat_format.render(conversation)
        if len(rendered.input_ids) > max_seq_len:
            truncated += 1
            rendered = Rendered(rendered.input_ids[:max_seq_len], rendered.labels[:max_seq_len])
        if len(rendered.input_ids) > 1 and rendered.trained_tokens > 0:
            examples.append(rendered)
    return examples, truncated


def tokenize_sft(
    path: Path, chat_format: ChatFormat, max_seq_len: int, system_prompt: str | None = None
) -> tuple[list[Rendered], int]:
    """Rendered examples of a conversation file and how many were truncated."""
    return render_sft(read_conversations(path, system_prompt), chat_format, max_seq_len)


def read_texts(path: Path, text_field: str) -> Iterator[str]:
    """Documents of a pt dataset: `text_field` of each JSONL/JSON/CSV record, or
    blank-line-separated paragraphs of a .txt/.md file (one statute article per paragraph)."""
    if path.suffix in (".txt", ".md"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DomainLMError(f"{path}: not UTF-8 text ({exc.reason})") from None
        for block in text.replace("\r\n", "\n").split("\n\n"):
            if block.strip():
                yield block.strip()
        return
    yield from record_texts(path, [text_field])


def tokenize_pt(path: Path, tokenizer: Any, text_field: str, max_seq_len: int) -> list[Rendered]:
    """Raw documents, each followed by EOS and cut into pieces of at most `max_seq_len`."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = []
    for text in read_texts(path, text_field):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        for start in range(0, len(ids), max_seq_len):
            piece = ids[start : start + max_seq_len]
            if len(piece) > 1:
                examples.append(Rendered(piece, list(piece)))
    if not examples:
        raise DomainLMError(f"{path}: no text to train on")
    return examples


def mix(datasets: list[Dataset], seed: int, epoch: int) -> list[Rendered]:
    """One epoch's examples: dataset i gives a share `weight_i / sum(weights)` of the total
    (sampled without replacement, cycling when its share exceeds its size), shuffled."""
    rng = random.Random(f"{seed}:{epoch}:mix")
    total = sum(len(d.examples) for d in datasets)
    weight_sum = sum(d.weight for d in datasets)
    chosen: list[Rendered] = []
    for dataset in datasets:
        if len(datasets) == 1:
            count = len(dataset.examples)
        else:
            count = max(1, round(total * dataset.weight / weight_sum))
        order: list[int] = []
        while len(order) < count:
            block = list(range(len(dataset.examples)))
            rng.shuffle(block)
            order.extend(block)
        chosen.extend(dataset.examples[i] for i in order[:count])
    rng.shuffle(chosen)
    return chosen


def pack(examples: list[Rendered], max_seq_len: int) -> list[list[Rendered]]:
    """Best-fit-decreasing packing into rows of at most `max_seq_len` tokens."""
    rows: list[list[Rendered]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for example in sorted(examples, key=lambda e: -len(e.input_ids)):
        size = len(example.input_ids)
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            space, row = free.pop(at)
        else:
            space, row = max_seq_len, len(rows)
            rows.append([])
        rows[row].append(example)
        if space - size > 1:
            bisect.insort(free, (space - size, row))
    return rows


def _shifted(example: Rendered) -> list[int]:
    return [*example.labels[1:], IGNORE_INDEX]


def collate(rows: list[list[Rendered]], pad_id: int, packed: bool) -> Batch:
    """A batch of rows, padded to the longest; padding is never trained on."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids)
            ids[r, at : at + n] = torch.tensor(example.input_ids)
            targets[r, at : at + n] = torch.tensor(_shifted(example))
            positions[r, at : at + n] = torch.arange(n)
            at += n
        mask[r, :at] = 1
        # Padding at the end of a packed row is its own segment (positions restart at 0).
        positions[r, at:] = torch.arange(width - at)
    real = int(mask.sum())
    return Batch(ids, targets, positions, None if packed else mask, real)


@dataclass
class BatchPlan:
    """Deterministic micro-batches for every epoch: the same seed gives the same order, so
    a resumed run sees exactly the batches it would have seen."""

    datasets: list[Dataset]
    batch_size: int
    max_seq_len: int
    packing: bool
    pad_id: int
    seed: int

    def epoch(self, epoch: int) -> list[list[list[Rendered]]]:
        """Micro-batches of epoch `epoch`, each a list of rows of examples."""
        examples = mix(self.datasets, self.seed, epoch)
        rng = random.Random(f"{self.seed}:{epoch}:batches")
        if self.packing:
            rows = pack(examples, self.max_seq_len)
            rng.shuffle(rows)
        else:
            # Length-grouped: sort within windows of 64 batches so padding stays small
            # while the order stays random between windows.
            rows = [[e] for e in examples]
            window = self.batch_size * 64
            rows = [
                row
                for start in range(0, len(rows), window)
                for row in sorted(rows[start : start + window], key=lambda r: len(r[0].input_ids))
            ]
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        if not self.packing:
            rng.shuffle(batches)
        return batches

    def batches(self, start: int = 0) -> Iterator[tuple[int, Batch]]:
        """(epoch, batch) from micro-batch number `start` on, endlessly."""
        index, epoch = 0, 0
        while True:
            plan = self.epoch(epoch)
            if not plan:
                raise DomainLMError("the datasets give no training examples")
            for rows in plan:
                if index >= start:
                    yield epoch, collate(rows, self.pad_id, self.packing)
                index += 1
            epoch += 1


def eval_batches(
    examples: list[Rendered], batch_size: int, max_seq_len: int, pad_id: int
) -> list[Batch]:
    """Dev-set batches (packed, fixed order)."""
    rows = pack(examples, max_seq_len)
    return [
        collate(rows[i : i + batch_size], pad_id, True) for i in range(0, len(rows), batch_size)
    ]
