"""The engine: experts on one base, mixed-expert batches, streaming."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.generation import Generator, Request, Sampling
from domainlm.errors import DomainLMError
from tests.engine_helpers import make_expert, tiny_base


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("experts")
    for i, name in enumerate(("law", "fin", "tax")):
        make_expert(root, name, seed=i + 1, description=f"{name} questions")
    make_expert(root, "alien", seed=9, content_hash="sha256:another-base")
    return root


def _prompts(tokenizer: object) -> list[list[int]]:
    texts = ["定金是什么", "利息怎么算", "hello there", "合同 成立"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # type: ignore[operator]


def test_mixed_expert_batch_equals_each_expert_alone(experts: Path) -> None:
    pool = AdapterPool(tiny_base(), roots=[experts])
    for name in ("law", "fin"):
        pool.add(experts / name)
    generator = Generator(pool)
    greedy = Sampling(max_new_tokens=8)
    prompts = _prompts(pool.base.tokenizer)
    plan = [("law", prompts[0]), ("fin", prompts[1]), (BASE, prompts[2]), ("law", prompts[3])]
    mixed = generator.run([Request(p, e, greedy) for e, p in plan])
    alone = [generator.run([Request(p, e, greedy)])[0] for e, p in plan]
    assert [c.text for c in mixed] == [c.text for c in alone]
    # The experts really differ from each other and from the base.
    outputs = {
        e: generator.run([Request(prompts[0], e, greedy)])[0].text for e in ("law", "fin", BASE)
    }
    assert len(set(outputs.values())) == 3


def test_pool_refuses_and_evicts(experts: Path, tmp_path: Path) -> None:
    pool = AdapterPool(tiny_base(), roots=[experts], max_loaded=2)
    with pytest.raises(DomainLMError, match="trained on another base model"):
        pool.add(experts / "alien")
    outside = make_expert(tmp_path, "outside", seed=3)
    with pytest.raises(DomainLMError, match="experts load only from"):
        pool.add(outside)
    pool.add(experts / "law")
    pool.add(experts / "fin")
    pool.resolve("law")  # law is now the most recently used
    pool.add(experts / "tax")
    assert pool.names == [BASE, "law", "tax"]  # fin was evicted
    with pytest.raises(DomainLMError, match="no expert 'fin'"):
        pool.resolve("fin")
    pool.remove("law")
    assert pool.names == [BASE, "tax"]


def test_streaming_matches_and_stops(experts: Path) -> None:
    pool = AdapterPool(tiny_base(), roots=[experts])
    pool.add(experts / "law")
    generator = Generator(pool)
    prompt = _prompts(pool.base.tokenizer)[0]
    request = Request(prompt, "law", Sampling(max_new_tokens=12))
    whole = generator.run([request])[0].text
    assert "".join(generator.stream(request)) == whole
    stop = whole[3:5]
    cut = "".join(generator.stream(Request(prompt, "law", Sampling(max_new_tokens=12), [stop])))
    assert cut == whole.split(stop, 1)[0]


def test_prompt_longer_than_the_context_is_a_clear_error(experts: Path) -> None:
    pool = AdapterPool(tiny_base())
    generator = Generator(pool)
    with pytest.raises(DomainLMError, match="exceeds the model's context"):
        generator.run([Request([5] * (generator.context + 10))])


def test_batched_lora_equals_peft_per_row(experts: Path) -> None:
    import torch

    pool = AdapterPool(tiny_base(), roots=[experts])
    for name in ("law", "fin", "tax"):
        pool.add(experts / name)
    ids = torch.tensor([[5, 6, 7, 8, 9]] * 4)
    rows = ["law", "fin", BASE, "tax"]
    with torch.no_grad():
        reference = pool.model(input_ids=ids, adapter_names=pool.peft_names(rows)).logits
        with pool.batched(rows) as batched:
            assert batched  # the stacked path, not peft's loop
            ours = pool.model(input_ids=ids).logits
        alone = pool.model(input_ids=ids[:1], adapter_names=["law"]).logits
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(ours[:1], alone, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # experts differ
    # Outside the context the hooks do nothing: peft's own result stands.
    with torch.no_grad():
        again = pool.model(input_ids=ids, adapter_names=pool.peft_names(rows)).logits
    assert torch.allclose(again, reference)
    pool.remove("tax")  # the stacks follow the pool
    with torch.no_grad(), pool.batched(["law", "fin"]) as batched:
        assert batched and pool.model(input_ids=ids[:2]).logits.shape[0] == 2


def test_scheduler_batches_concurrent_requests_for_different_experts(experts: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from domainlm.engine.scheduler import Scheduler

    pool = AdapterPool(tiny_base(), roots=[experts])
    for name in ("law", "fin"):
        pool.add(experts / name)
    generator = Generator(pool)
    prompts = _prompts(pool.base.tokenizer)
    plan = [(e, prompts[i % 4]) for i, e in enumerate(["law", "fin", BASE, "law", "fin", BASE])]
    greedy = Sampling(max_new_tokens=6)
    expected = [generator.run([Request(p, e, greedy)])[0].text for e, p in plan]
    scheduler = Scheduler(generator, max_batch=8, max_wait=0.2)
    with ThreadPoolExecutor(6) as callers:
        futures = list(
            callers.map(lambda item: scheduler.submit(Request(item[1], item[0], greedy)), plan)
        )
        texts = [f.result(timeout=60).text for f in futures]
    scheduler.close()
    assert texts == expected
    assert scheduler.batches_run < len(plan)  # requests shared batches
    bad = Scheduler(generator)
    with pytest.raises(DomainLMError, match="no expert"):
        bad.submit(Request(prompts[0], "nobody", greedy)).result(timeout=60)
    bad.close()


def test_adapters_on_embeddings_use_peft_path(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from domainlm.train.expert import BaseRef, ExpertCard, write_card

    base = tiny_base()
    config = LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)
    model = get_peft_model(base.model, config)
    model.save_pretrained(tmp_path / "emb")
    base.model = model.unload()
    ref = BaseRef(model="tiny", content_hash=base.content_hash, chat_format="hf")
    write_card(tmp_path / "emb", ExpertCard(name="emb", base=ref, stage="sft"))
    pool = AdapterPool(base)
    pool.add(tmp_path / "emb")
    with torch.no_grad(), pool.batched(["emb", BASE]) as batched:
        assert not batched  # the stacked path covers linear LoRA only
    generator = Generator(pool)
    prompt = _prompts(base.tokenizer)[0]
    mixed = generator.run([Request(prompt, "emb", Sampling(max_new_tokens=4)), Request(prompt)])
    alone = generator.run([Request(prompt, "emb", Sampling(max_new_tokens=4))])
    assert mixed[0].text == alone[0].text
