"""Packing: examples share rows without seeing each other, and the loss does not change."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from domainlm.chat.conversation import Conversation
from domainlm.chat.formats import Rendered, get_format
from domainlm.models import build_tiny_model
from domainlm.train.batching import BatchPlan, Dataset, collate, mix, pack
from domainlm.train.loss import LossModel, chunked_cross_entropy
from tests.train_helpers import QA


def _examples(tokenizer: Any) -> list[Rendered]:
    chat = get_format("chatglm3", tokenizer)
    return [
        chat.render(
            Conversation.model_validate(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            )
        )
        for q, a in QA
    ]


@pytest.fixture(params=["sdpa", "eager"])
def lora_model(tokenizer: Any, request: pytest.FixtureRequest) -> Any:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = build_tiny_model(tokenizer)
    base.set_attn_implementation(request.param)
    model = get_peft_model(
        base,
        LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False),
    )
    return LossModel(model)


def _loss_and_grads(loss_model: Any, batch: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss_model.zero_grad()
    loss = loss_model(
        input_ids=batch.input_ids,
        targets=batch.targets,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
    )
    loss.backward()
    grads = [p.grad.clone() for p in loss_model.parameters() if p.requires_grad]
    return loss.detach(), grads


def test_packed_loss_and_gradients_equal_unpacked(tokenizer: Any, lora_model: Any) -> None:
    examples = _examples(tokenizer)[:4]
    packed = collate([examples], tokenizer.pad_token_id, packed=True)
    assert packed.input_ids.shape[0] == 1  # all four in one row
    packed_loss, packed_grads = _loss_and_grads(lora_model, packed)

    one_by_one = torch.zeros(())
    grads = [torch.zeros_like(g) for g in packed_grads]
    for example in examples:
        loss, example_grads = _loss_and_grads(
            lora_model, collate([[example]], tokenizer.pad_token_id, packed=True)
        )
        one_by_one += loss
        grads = [a + b for a, b in zip(grads, example_grads, strict=True)]
    assert packed_loss == pytest.approx(float(one_by_one), rel=1e-5)
    for a, b in zip(packed_grads, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)

    # The same row with continuous positions lets examples attend to each other:
    # the test above would fail if the block-diagonal mask were lost.
    leaky = collate([examples], tokenizer.pad_token_id, packed=True)
    leaky.position_ids = torch.arange(leaky.input_ids.shape[1]).unsqueeze(0)
    leaky_loss, _ = _loss_and_grads(lora_model, leaky)
    assert abs(float(leaky_loss) - float(one_by_one)) > 1e-3


def test_padded_batches_equal_packed(tokenizer: Any, lora_model: Any) -> None:
    examples = _examples(tokenizer)[:3]
    padded = collate([[e] for e in examples], tokenizer.pad_token_id, packed=False)
    assert padded.attention_mask is not None and padded.input_ids.shape[0] == 3
    packed = collate([examples], tokenizer.pad_token_id, packed=True)
    assert padded.trained_tokens == packed.trained_tokens
    assert padded.tokens == packed.tokens == sum(len(e.input_ids) for e in examples)
    assert padded.input_ids.numel() > padded.tokens  # padding is not counted
    assert _loss_and_grads(lora_model, padded)[0] == pytest.approx(
        float(_loss_and_grads(lora_model, packed)[0]), rel=1e-5
    )


def test_chunked_cross_entropy_matches_full_logits() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :4] = -100
    chunked = chunked_cross_entropy(head, hidden, targets, chunk=3)
    full = torch.nn.functional.cross_entropy(
        head(hidden).flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    (g_full,) = torch.autograd.grad(full, hidden)
    assert torch.allclose(g_chunked, g_full, atol=1e-6)


def test_pack_places_every_example_once_within_the_limit() -> None:
    rng = random.Random(0)
    examples = [Rendered([i] * rng.randint(2, 100), [i] * 2) for i in range(300)]
    rows = pack(examples, 128)
    placed = [e for row in rows for e in row]
    assert sorted(id(e) for e in placed) == sorted(id(e) for e in examples)
    assert all(sum(len(e.input_ids) for e in row) <= 128 for row in rows)
    used = sum(len(e.input_ids) for e in examples) / (len(rows) * 128)
    assert used > 0.9  # best-fit leaves little room unused


def test_mix_follows_the_weights_and_the_seed(tmp_path: Path) -> None:
    domain = [Rendered([1, 2], [1, 2]) for _ in range(80)]
    general = [Rendered([3, 4], [3, 4]) for _ in range(20)]
    datasets = [Dataset(tmp_path, 0.5, domain, ""), Dataset(tmp_path, 0.5, general, "")]
    epoch = mix(datasets, seed=1, epoch=0)
    assert len(epoch) == 100
    general_ids = {id(e) for e in general}
    assert sum(id(e) in general_ids for e in epoch) == 50  # oversampled 2.5x
    assert [id(e) for e in mix(datasets, 1, 0)] == [id(e) for e in epoch]
    assert [id(e) for e in mix(datasets, 1, 1)] != [id(e) for e in epoch]

    plan = BatchPlan(datasets, 4, 16, True, 0, seed=3)
    first = [b.input_ids.tolist() for _, (_, b) in zip(range(5), plan.batches(), strict=False)]
    again = [
        b.input_ids.tolist() for _, (_, b) in zip(range(3), plan.batches(start=2), strict=False)
    ]
    assert again == first[2:]


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_frozen_head_loss_matches_full_logits(softcap: float | None) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :4] = -100
    chunked = chunked_cross_entropy(head, hidden, targets, softcap=softcap, chunk=3)
    logits = head(hidden)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    full = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    (g_chunked,) = torch.autograd.grad(chunked * 0.5, hidden)
    (g_full,) = torch.autograd.grad(full * 0.5, hidden)
    assert torch.allclose(g_chunked, g_full, atol=1e-6)


def _saved_bytes(loss_model: Any, batch: Any) -> tuple[int, list[tuple[int, ...]]]:
    """Bytes a training forward keeps for backward (each storage once), and the shapes."""
    seen: dict[int, int] = {}
    shapes = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_model(
            input_ids=batch.input_ids, targets=batch.targets, position_ids=batch.position_ids
        )
    return sum(seen.values()), shapes


def test_training_keeps_no_logits_and_no_dropout_copies(tokenizer: Any) -> None:
    from domainlm.train.recipe import LoraSpec
    from domainlm.train.setup import attach_lora

    batch = collate(pack(_examples(tokenizer), 256), tokenizer.pad_token_id, True)
    saved = {}
    for dropout in (0.0, 0.1):
        torch.manual_seed(0)
        model = attach_lora(
            build_tiny_model(tokenizer),
            LoraSpec(r=4, alpha=8, dropout=dropout),
            gradient_checkpointing=False,
            quantized=False,
            autocast=False,
        )
        saved[dropout], shapes = _saved_bytes(LossModel(model).train(), batch)
        vocab = model.get_output_embeddings().weight.shape[0]
        assert not [s for s in shapes if s and s[-1] == vocab]  # no logits wait for backward
    # Dropout on the adapters' input keeps nothing more for backward than no dropout.
    assert saved[0.1] == saved[0.0]


def test_folded_lora_dropout_drops_and_differentiates_like_dropout() -> None:
    from domainlm.train.lora import _DropoutLinear, _mask

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    weight = torch.randn(4, 8, requires_grad=True)
    out = _DropoutLinear.apply(x, weight, 0.5, 1234)
    mask = _mask(x.detach(), 0.5, 1234)
    assert 0 < int((mask == 0).sum()) < mask.numel()  # some inputs dropped, some kept
    reference = torch.nn.functional.linear(x * mask, weight)
    assert torch.allclose(out, reference)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, weight), upstream)
    expected = torch.autograd.grad(reference, (x, weight), upstream)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, expected, strict=True))
