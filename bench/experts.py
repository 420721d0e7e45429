"""Serving several experts from one base: mixed batches vs the alternatives, same run.

    python bench/experts.py            (or `make bench`)

Four LoRA experts (r=16, all-linear) on SmolLM2-135M-Instruct, 32 requests spread over them
(8 each, interleaved), 16 new tokens each, greedy:
  (a) DomainLM's AdapterPool: all 32 in mixed-expert batches (stacked LoRA, batched matmuls),
      and peft's own mixed path (`adapter_names=` per row) on the same batches;
  (b) grouping by expert and calling `set_adapter` before each group (peft's usual path);
  (c) reloading the base and the adapter for each expert (what a merge-per-expert setup does);
plus a one-adapter batch of the same size (the cost of mixing), and the time to add an
expert to a running pool. Results to bench/results/experts.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results" / "experts.json"
EXPERTS, REQUESTS, NEW_TOKENS, BATCH = 4, 32, 16, 32
PROMPTS = [
    "What is a deposit in a contract?",
    "How is compound interest computed?",
    "Explain what a bond coupon is.",
    "What does a lease agreement contain?",
]


def make_experts(base: Any, folder: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from domainlm.expert import BaseRef, ExpertCard, write_card

    paths = []
    for i in range(EXPERTS):
        torch.manual_seed(i)
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False
        )
        model = get_peft_model(base.model, config)
        # Small random weights: distinct experts that still produce text.
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.mul_(0.01)
        path = folder / f"expert{i}"
        model.save_pretrained(path)
        base.model = model.unload()  # peft wraps in place; give the plain base back
        card = ExpertCard(
            name=f"expert{i}",
            base=BaseRef(model="default", content_hash=base.content_hash, chat_format="hf"),
            stage="sft",
        )
        write_card(path, card)
        paths.append(path)
    return paths


def requests(tokenizer: Any) -> list[tuple[str, list[int]]]:
    from domainlm.chat.conversation import Conversation
    from domainlm.chat.formats import get_format

    chat = get_format("hf", tokenizer)
    out = []
    for i in range(REQUESTS):
        prompt = Conversation.model_validate(
            {"messages": [{"role": "user", "content": PROMPTS[i % 4]}]}
        )
        out.append((f"expert{i % EXPERTS}", chat.render_prompt(prompt)))
    return out


def timed_batches(
    generator: Any, plan: list[tuple[str, list[int]]], prepare: Any = None
) -> dict[str, Any]:
    from domainlm.engine.generation import Request, Sampling

    sampling = Sampling(max_new_tokens=NEW_TOKENS)
    latencies, tokens = [], 0
    started = time.perf_counter()
    for start in range(0, len(plan), BATCH):
        group = plan[start : start + BATCH]
        if prepare is not None:
            prepare(group[0][0])
        done = generator.run([Request(ids, name, sampling) for name, ids in group])
        tokens += sum(c.tokens for c in done)
        latencies += [time.perf_counter() - started] * len(group)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "requests_per_s": len(plan) / seconds,
        "tokens_per_s": tokens / seconds,
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
    }


def main() -> None:
    import torch

    from domainlm.engine.adapters import AdapterPool
    from domainlm.engine.local import LocalEngine
    from domainlm.engine.setup import device_dtype
    from domainlm.models.base import load_base

    _, dtype = device_dtype()
    base = load_base("default", dtype=dtype)
    results: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "dtype": str(dtype)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_experts(base, Path(tmp))
        plan = requests(base.tokenizer)
        pool = AdapterPool(base, roots=[Path(tmp)])
        for path in paths[:-1]:
            pool.add(path)
        started = time.perf_counter()
        pool.add(paths[-1])
        results["add_expert_s"] = time.perf_counter() - started
        generator = LocalEngine(pool)
        from domainlm.engine.generation import Request, Sampling

        warm = Sampling(max_new_tokens=2)
        generator.run([Request(ids, name, warm) for name, ids in plan[:4]])  # warm-up

        results["a_mixed_batches"] = timed_batches(generator, plan)
        same = [("expert0", ids) for _, ids in plan]
        results["one_adapter_batches"] = timed_batches(generator, same)
        results["peft_mixed_adapter_names"] = timed_batches(_PeftMixed(pool, base.tokenizer), plan)

        grouped = sorted(plan, key=lambda item: item[0])
        # (b): rows of one expert per batch; peft's set_adapter before each group.
        model = pool.model
        global BATCH
        full, BATCH = BATCH, REQUESTS // EXPERTS
        try:
            results["b_grouped_set_adapter"] = timed_batches(
                _PeftActive(model, base.tokenizer), grouped, prepare=model.set_adapter
            )
        finally:
            BATCH = full

        def reload(name: str) -> None:
            from peft import PeftModel

            fresh = load_base("default", dtype=dtype)
            reloaded = PeftModel.from_pretrained(fresh.model, str(Path(tmp) / name))
            reload.model = reloaded  # type: ignore[attr-defined]

        BATCH = REQUESTS // EXPERTS
        try:
            results["c_reload_per_expert"] = timed_batches(
                _Reloaded(reload, base.tokenizer), grouped, prepare=reload
            )
        finally:
            BATCH = full
    a, b = results["a_mixed_batches"], results["b_grouped_set_adapter"]
    results["ratio_mixed_vs_grouped"] = a["requests_per_s"] / b["requests_per_s"]
    results["ratio_mixed_vs_peft_mixed"] = (
        a["requests_per_s"] / results["peft_mixed_adapter_names"]["requests_per_s"]
    )
    results["mixed_cost_vs_one_adapter"] = (
        results["one_adapter_batches"]["requests_per_s"] / a["requests_per_s"] - 1
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for key in (
        "a_mixed_batches",
        "peft_mixed_adapter_names",
        "one_adapter_batches",
        "b_grouped_set_adapter",
        "c_reload_per_expert",
    ):
        r = results[key]
        print(
            f"{key:24s} {r['requests_per_s']:6.2f} req/s  {r['tokens_per_s']:7.1f} tok/s  "
            f"p50 {r['latency_p50_s']:.2f}s  p95 {r['latency_p95_s']:.2f}s"
        )
    print(
        f"mixed / peft mixed: {results['ratio_mixed_vs_peft_mixed']:.2f}x; "
        f"mixed / grouped: {results['ratio_mixed_vs_grouped']:.2f}x; mixing costs "
        f"{results['mixed_cost_vs_one_adapter']:+.1%} against one adapter; "
        f"adding an expert {results['add_expert_s'] * 1000:.0f} ms  -> {RESULTS}"
    )
    del torch


class _PeftMixed:
    """peft's own mixed-batch path: `adapter_names=` per row."""

    def __init__(self, pool: Any, tokenizer: Any):
        self.pool, self.tokenizer = pool, tokenizer

    def run(self, requests: list[Any]) -> list[Any]:
        names = self.pool.peft_names([r.expert for r in requests])
        return _generate(self.pool.model, self.tokenizer, requests, adapter_names=names)


class _PeftActive:
    """Runs batches on a PeftModel's active adapter (no adapter_names): peft's usual path."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer

    def run(self, requests: list[Any]) -> list[Any]:
        return _generate(self.model, self.tokenizer, requests)


class _Reloaded:
    def __init__(self, holder: Any, tokenizer: Any):
        self.holder, self.tokenizer = holder, tokenizer

    def run(self, requests: list[Any]) -> list[Any]:
        return _generate(self.holder.model, self.tokenizer, requests)


def _generate(model: Any, tokenizer: Any, requests: list[Any], **extra: Any) -> list[Any]:
    import torch

    from domainlm.engine.generation import Completion

    width = max(len(r.prompt) for r in requests)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(requests), width), pad)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for row, request in enumerate(requests):
        ids[row, width - len(request.prompt) :] = torch.tensor(request.prompt)
        mask[row, width - len(request.prompt) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
            pad_token_id=pad, **extra,
        )  # fmt: skip
    return [Completion("", int((row[width:] != pad).sum()), "length") for row in out]


if __name__ == "__main__":
    main()
