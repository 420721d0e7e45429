"""The engine: experts on one base, continuous batching of mixed experts and sampling
settings, streams, cancellation, limits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.generation import Request, Sampling
from domainlm.engine.local import LocalEngine
from domainlm.errors import DomainLMError
from domainlm.expert import read_card, write_card
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
    engine = LocalEngine(pool)
    greedy = Sampling(max_new_tokens=8)
    prompts = _prompts(pool.base.tokenizer)
    plan = [("law", prompts[0]), ("fin", prompts[1]), (BASE, prompts[2]), ("law", prompts[3])]
    mixed = engine.run([Request(p, e, greedy) for e, p in plan])
    alone = [engine.run([Request(p, e, greedy)])[0] for e, p in plan]
    assert [c.text for c in mixed] == [c.text for c in alone]
    # The experts really differ from each other and from the base.
    outputs = {
        e: engine.run([Request(prompts[0], e, greedy)])[0].text for e in ("law", "fin", BASE)
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
    engine = LocalEngine(pool)
    prompt = _prompts(pool.base.tokenizer)[0]
    request = Request(prompt, "law", Sampling(max_new_tokens=12))
    whole = engine.run([request])[0].text
    assert "".join(engine.stream(request)) == whole
    stop = whole[3:5]
    cut = "".join(engine.stream(Request(prompt, "law", Sampling(max_new_tokens=12), [stop])))
    assert cut == whole.split(stop, 1)[0]


def test_prompt_longer_than_the_context_is_a_clear_error(experts: Path) -> None:
    pool = AdapterPool(tiny_base())
    engine = LocalEngine(pool)
    with pytest.raises(DomainLMError, match="exceeds the model's context"):
        engine.submit(Request([5] * (engine.context + 10)))


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("length", [1, 5])
def test_batched_lora_in_either_stack_equals_peft(experts: Path, dtype: str, length: int) -> None:
    """A step with few tokens takes the fp32 stack on CPU, a longer one the model's dtype:
    both give peft's result, and a one-expert batch takes the single-expert path."""
    import torch

    base = tiny_base()
    base.model.to(getattr(torch, dtype))
    pool = AdapterPool(base, roots=[experts])
    for name in ("law", "fin"):
        pool.add(experts / name)
    ids = torch.tensor([[5, 6, 7, 8, 9][:length]] * 3)
    tolerance = 1e-5 if dtype == "float32" else 3e-2
    for rows in (["law", BASE, "fin"], ["fin"] * 3):
        with torch.no_grad():
            reference = pool.model(input_ids=ids, adapter_names=pool.peft_names(rows)).logits
            with pool.batched(rows) as batched:
                assert batched
                ours = pool.model(input_ids=ids).logits
        assert torch.allclose(ours.float(), reference.float(), atol=tolerance, rtol=tolerance)
        with torch.no_grad(), pool.model.disable_adapter():
            base_logits = pool.model(input_ids=ids).logits
        assert not torch.allclose(ours[-1].float(), base_logits[-1].float(), atol=0.1)


def test_adapters_on_embeddings_use_peft_path(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from domainlm.expert import BaseRef, ExpertCard, write_card

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
    engine = LocalEngine(pool)
    prompt = _prompts(base.tokenizer)[0]
    mixed = engine.run([Request(prompt, "emb", Sampling(max_new_tokens=4)), Request(prompt)])
    alone = engine.run([Request(prompt, "emb", Sampling(max_new_tokens=4))])
    assert mixed[0].text == alone[0].text


def _broken_copy(expert: Path, name: str) -> Path:
    """A copy of `expert` under `name` (its card renamed too), to break in one way."""
    folder = expert.parent / name
    shutil.copytree(expert, folder)
    write_card(folder, read_card(expert).model_copy(update={"name": name}))
    return folder


def test_folders_that_are_not_experts_say_why(tmp_path: Path, cli: Any) -> None:
    root = tmp_path / "experts"
    good = make_expert(root, "good", seed=1)
    half = _broken_copy(good, "half")  # what Ctrl-C during the samples used to leave
    (half / "expert.yaml").unlink()
    (half / "checkpoints").mkdir()
    (root / "law.partial" / "checkpoints").mkdir(parents=True)  # a run not finished yet
    (_broken_copy(good, "plain") / "expert.yaml").unlink()
    (_broken_copy(good, "noconfig") / "adapter_config.json").unlink()
    (_broken_copy(good, "badyaml") / "expert.yaml").write_text("name: [law\n")
    (_broken_copy(good, "badcard") / "expert.yaml").write_text("name: law\n")
    weights = _broken_copy(good, "cut") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    bigger = _broken_copy(good, "bigger")  # loads before `good`: into the bare base
    config = json.loads((bigger / "adapter_config.json").read_text())
    (bigger / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    _broken_copy(good, "twin")
    write_card(root / "twin", read_card(good))  # a second expert called "good"
    (root / "notes").mkdir()
    (root / ".cache").mkdir()
    (root / "README.txt").write_text("not a folder")

    pool = AdapterPool(tiny_base(), roots=[root])
    skipped = pool.scan(root)
    assert pool.names == [BASE, "good"]
    resume = "to finish it: `domainlm train RECIPE --resume`"
    expected = {
        "half": f"{half}: not an expert: training did not finish (adapter files but no "
        f"expert.yaml; {resume})",
        "law": f"{root / 'law.partial'}: not an expert: the working folder of an unfinished "
        f"training run of 'law' ({resume})",
        "plain": "not an expert: adapter files but no expert.yaml",
        "noconfig": "noconfig: not an expert: no adapter_config.json",
        "badyaml": "badyaml/expert.yaml: unreadable expert card: ",
        "badcard": "badcard/expert.yaml: invalid expert card: base: Field required",
        "cut": "cut/adapter_model.safetensors: unreadable adapter weights: ",
        "bigger": "bigger: cannot load the adapter: Error(s) in loading state_dict",
        "twin": f"twin: expert 'good' is already loaded from {good}",
        "notes": "notes: not an expert: no expert.yaml",
    }
    assert skipped.keys() == expected.keys()
    for name, reason in expected.items():
        assert reason in skipped[name] and "\n" not in skipped[name], skipped[name]
    # The failed load of `bigger` left no layers behind (peft had added them to the base).
    assert not [n for n, _ in pool.model.named_parameters() if ".bigger." in n]
    with pytest.raises(DomainLMError, match=r"no expert 'half': .*training did not finish"):
        pool.resolve("half")

    # Pointed at one folder that is not an expert: an error, with the reason.
    code, _, err = cli("ask", "定金？", "--model", "tiny", "--experts", half)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"error: {expected['half']}"
    code, out, err = cli("ask", "定金？", "--model", "tiny", "--experts", good, "--expert", "good")
    assert code == 0 and out.startswith("good (chosen)"), err


def _byte_ids(tokenizer: Any, data: bytes) -> list[int]:
    """One token per byte of `data` (the byte-level alphabet of GPT-2-style BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = {b: chr(b) for b in printable}
    alphabet.update(
        {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in alphabet)}
    )
    return [tokenizer.convert_tokens_to_ids(alphabet[b]) for b in data]


def _scripted_tokens(monkeypatch: pytest.MonkeyPatch, new_ids: list[int]) -> None:
    """The engine's sampler returns `new_ids` in turn (one per decode step, a request
    alone), whatever the model says."""
    script: list[int] = []

    def next_tokens(logits: Any, settings: Any, randoms: Any, seen: Any) -> list[int]:
        if not script:
            script.extend(new_ids)
        return [script.pop(0) for _ in settings]

    monkeypatch.setattr("domainlm.engine.local.next_tokens", next_tokens)


def test_a_character_cut_by_the_token_limit_is_dropped_not_garbled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = AdapterPool(tiny_base())
    tokenizer = pool.base.tokenizer
    engine = LocalEngine(pool)
    # The token limit falls after two of the three bytes of 好 (what left `在你的�` in chat).
    cut = _byte_ids(tokenizer, "在你的好".encode()[:-1])
    _scripted_tokens(monkeypatch, cut)
    request = Request([5, 6], sampling=Sampling(max_new_tokens=len(cut)))
    completion = engine.run([request])[0]
    assert (completion.text, completion.finish_reason) == ("在你的", "length")
    pieces = list(engine.stream(request))
    assert "".join(pieces) == "在你的" and not any("\ufffd" in p for p in pieces), pieces

    # A character whose bytes come in several tokens is streamed once it is whole.
    whole = _byte_ids(tokenizer, "好吗".encode())
    _scripted_tokens(monkeypatch, whole)
    request = Request([5, 6], sampling=Sampling(max_new_tokens=len(whole)))
    pieces = list(engine.stream(request))
    assert "".join(pieces) == "好吗" == engine.run([request])[0].text
    assert not any("\ufffd" in p for p in pieces), pieces
    assert len(pieces) == 2  # 好 and 吗, each once its three bytes are in
    engine.close()
