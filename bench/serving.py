"""Serving: an arrival trace replayed against DomainLM's engine and its peers, same run.

    python bench/serving.py                    (or `make bench-serving`)
    python bench/serving.py --rounds 5 --requests 64 --deadline 300

The trace: seeded Poisson arrivals (`--rate` requests/s), `--requests` requests spread over
the base and 4 LoRA experts (r=16, all-linear) of SmolLM2-135M-Instruct, chat-rendered
questions as prompts, reply lengths drawn from 16-256 tokens; EOS is ignored, so every
configuration generates exactly the same number of tokens. Replayed against:

  (a) `domainlm`: the LocalEngine (continuous batching, experts mixed in every step);
  (b) `static`: the static-batch scheduler DomainLM had before (a frozen copy below: batches
      formed within 10 ms of the first arrival, one `generate` call per sampling group,
      every row's text at the end of its batch), experts mixed by the batched LoRA;
  (c) `transformers_cb`: transformers' own continuous batching (`init_continuous_batching`,
      paged cache, SDPA) on the base model alone, every request to the base;
  (d) `peft_one_adapter`: one adapter at a time, as a one-adapter server does: the waiting
      requests of the oldest request's expert in one static `generate` batch
      (`set_adapter`), then the next expert's.

A run stops at `--deadline` seconds; what had not finished by then counts as not finished
(its tokens are not counted). Reported per run: output tokens/s (tokens of finished
requests over the time from the first arrival to the last completion), time to first token
and inter-token latency (p50/p95; a static batch gives all its tokens at once: its first
token comes with the last), requests finished.

Also, in each round: decode MFU at 32 running rows (32 prompts at once, 128 new tokens each;
model FLOPs of the decode steps over their time, against this machine's measured bf16
matmul peak) for the engine and for `generate` on a static batch of 32; and 32 requests of
64 tokens on the engine with 4 experts mixed, all on one adapter, and one expert at a time
(four batches of 8 in turn).

The default rate (8/s: 64 requests arrive within about 8 s) is past what any of them
serves on 2 cores, so tokens/s measures capacity, not the offered load. Every run is a
process of its own (a fresh model, allocator and thread pool). Every configuration runs
`--rounds` times (at least 5 for a reported result), the configurations taking turns round
after round; the report gives median, min and max, and
ratios per pair of runs of the same round. Results go to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import machine, matmul_peak, model_shape, spread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results" / "serving.json"
EXPERTS = ["expert0", "expert1", "expert2", "expert3"]
QUESTIONS = [
    "What is a deposit in a contract?",
    "How is compound interest computed?",
    "Explain what a bond coupon is, with an example of how it is paid.",
    "What does a lease agreement contain?",
    "My landlord kept my deposit after I moved out. The flat was clean and I have photos. "
    "What can I do, and which documents should I gather first?",
    "Summarise the difference between a fixed and a floating interest rate.",
    "Is a verbal contract binding?",
    "A company paid a dividend of 2 dollars per share and the share trades at 50 dollars. "
    "What is the dividend yield, and how does it compare with a savings account at 3%?",
]


# -- the workload -----------------------------------------------------------------------
@dataclass
class Item:
    at: float  # seconds after the start
    expert: str
    prompt: list[int]
    new_tokens: int
    question: str = ""  # the user message the prompt renders


@dataclass
class Record:
    """What happened to one request."""

    arrival: float
    new_tokens: int
    token_times: list[float] = field(default_factory=list)
    done: float | None = None
    streamed: bool = True  # False: all its tokens came at once (no inter-token latency)


def make_trace(tokenizer: Any, requests: int, rate: float, seed: int) -> list[Item]:
    from domainlm.chat.conversation import Conversation
    from domainlm.chat.formats import get_format

    chat = get_format("hf", tokenizer)
    rng = random.Random(seed)
    at, items = 0.0, []
    for _ in range(requests):
        at += rng.expovariate(rate)
        question = rng.choice(QUESTIONS)
        conversation = Conversation.model_validate(
            {"messages": [{"role": "user", "content": question}]}
        )
        items.append(
            Item(
                at,
                rng.choice(["base", *EXPERTS]),
                chat.render_prompt(conversation),
                rng.randint(16, 256),
                question,
            )
        )
    return items


def replay(trace: list[Item], submit: Callable[[Item, Record], None]) -> list[Record]:
    """Call `submit` for each item at its arrival time (from this thread)."""
    records = []
    start = time.perf_counter()
    for item in trace:
        delay = start + item.at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        record = Record(time.perf_counter(), item.new_tokens)
        records.append(record)
        submit(item, record)
    return records


def left_padded(prompts: list[list[int]], pad: int) -> tuple[Any, Any]:
    """Input ids and attention mask of `prompts` as one left-padded batch."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise_run(records: list[Record], seconds: float) -> dict[str, Any]:
    finished = [r for r in records if r.done is not None and r.token_times]
    tokens = sum(r.new_tokens for r in finished)
    end = max((r.done for r in finished if r.done is not None), default=records[0].arrival)
    span = max(end - records[0].arrival, 1e-9)
    ttft = [r.token_times[0] - r.arrival for r in finished]
    gaps = [
        b - a
        for r in finished
        if r.streamed
        for a, b in zip(r.token_times, r.token_times[1:], strict=False)
    ]
    return {
        "finished": len(finished),
        "requests": len(records),
        "output_tokens": tokens,
        "seconds": span,
        "wall_seconds": seconds,
        "tokens_per_s": tokens / span,
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p95_s": percentile(ttft, 0.95),
        "itl_p50_s": percentile(gaps, 0.5),
        "itl_p95_s": percentile(gaps, 0.95),
    }


# -- (a) DomainLM's engine ---------------------------------------------------------------
def run_domainlm(setup: Setup, trace: list[Item], deadline: float) -> dict[str, Any]:
    from domainlm.engine.generation import Request, Sampling
    from domainlm.engine.local import LocalEngine

    engine = LocalEngine(setup.pool, max_rows=64)
    engine.run([Request(trace[0].prompt, sampling=Sampling(max_new_tokens=2))])  # warm-up
    streams: list[tuple[Record, Any]] = []

    def submit(item: Item, record: Record) -> None:
        sampling = Sampling(max_new_tokens=item.new_tokens, ignore_eos=True)
        streams.append((record, engine.submit(Request(item.prompt, item.expert, sampling))))

    started = time.perf_counter()
    records = replay(trace, submit)
    for record, stream in streams:
        left = started + deadline - time.perf_counter()
        try:
            completion = stream.result(timeout=max(left, 0.001))
        except TimeoutError:
            stream.cancel()
            continue
        record.token_times = list(stream.token_times)
        record.done = record.token_times[-1]
        assert completion.tokens == record.new_tokens
    engine.close()
    return summarise_run(records, time.perf_counter() - started)


# -- (b) the static-batch scheduler DomainLM had (frozen copy) -----------------------------
class FrozenStatic:
    """DomainLM's Generator._batch and Scheduler as they were before continuous batching,
    kept here only as the peer: `max_wait` after the first request, up to `max_batch`
    requests, one `model.generate` per sampling group (here: per reply length, since
    `max_new_tokens` is a sampling setting), left-padded rows, batched LoRA. The only change:
    `min_new_tokens` so that EOS is ignored, as in every configuration."""

    def __init__(self, pool: Any, max_batch: int = 16, max_wait: float = 0.01):
        self.pool, self.max_batch, self.max_wait = pool, max_batch, max_wait
        self.tokenizer = pool.base.tokenizer
        self.queue: queue.Queue[Any] = queue.Queue()
        self.abandoned = False  # past the deadline: what is left is not run
        self.worker = threading.Thread(target=self._loop, daemon=True)
        self.worker.start()

    def submit(self, item: Item, record: Record) -> None:
        self.queue.put((item, record))

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join()

    def _loop(self) -> None:
        while (first := self.queue.get()) is not None:
            batch = [first]
            closing = False
            while len(batch) < self.max_batch:
                try:
                    entry = self.queue.get(timeout=self.max_wait)
                except queue.Empty:
                    break
                if entry is None:
                    closing = True
                    break
                batch.append(entry)
            groups: dict[int, list[Any]] = {}
            for entry in batch:
                groups.setdefault(entry[0].new_tokens, []).append(entry)
            for new_tokens, group in groups.items():
                self._batch(group, new_tokens)
            if closing:
                return

    def _batch(self, group: list[Any], new_tokens: int) -> None:
        import torch

        if self.abandoned:
            return

        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        ids, mask = left_padded([item.prompt for item, _ in group], pad)
        experts = [self.pool.resolve(item.expert) for item, _ in group]
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens,
            "pad_token_id": pad,
            "do_sample": False,
        }
        with torch.no_grad(), self.pool.batched(experts) as batched:
            if not batched:
                names = self.pool.peft_names(experts)
                if names is not None:
                    kwargs["adapter_names"] = names
            self.pool.model.generate(**kwargs)
        all_at_once(group)


def all_at_once(group: list[tuple[Item, Record]]) -> None:
    """Record the requests of a static batch as done now, every token at once."""
    now = time.perf_counter()
    for _, record in group:
        record.token_times = [now] * record.new_tokens
        record.done = now
        record.streamed = False


def run_static(setup: Setup, trace: list[Item], deadline: float) -> dict[str, Any]:
    return _run_batches(FrozenStatic(setup.pool), trace, deadline)


def _run_batches(server: Any, trace: list[Item], deadline: float) -> dict[str, Any]:
    """Replay against a server whose records are filled by its worker; past the deadline
    its unfinished records stay empty and it runs nothing more."""
    started = time.perf_counter()
    records = replay(trace, server.submit)
    finished = threading.Thread(target=server.close, daemon=True)
    finished.start()
    finished.join(timeout=max(started + deadline - time.perf_counter(), 0.001))
    snapshot = [
        Record(r.arrival, r.new_tokens, list(r.token_times), r.done, r.streamed)
        if r.done is not None and r.done <= started + deadline
        else Record(r.arrival, r.new_tokens)
        for r in records
    ]
    server.abandoned = True  # the batch running now ends; nothing after it starts
    finished.join()  # the model is shared with the next configuration
    return summarise_run(snapshot, time.perf_counter() - started)


# -- (c) transformers' continuous batching, base model only -------------------------------
def run_transformers_cb(setup: Setup, trace: list[Item], deadline: float) -> dict[str, Any]:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    model = setup.plain
    longest = max(len(i.prompt) + i.new_tokens for i in trace)
    config = ContinuousBatchingConfig(
        num_blocks=max(16, -(-len(trace) * longest // 64)),
        page_size=64,
        max_batch_tokens=512,
        allow_block_sharing=False,
    )
    generation = GenerationConfig(max_new_tokens=256, do_sample=False, eos_token_id=-1)
    manager = model.init_continuous_batching(
        generation_config=generation, continuous_batching_config=config
    )
    manager.start()
    by_id: dict[str, Record] = {}

    def submit(item: Item, record: Record) -> None:
        request_id = f"r{len(by_id)}"
        by_id[request_id] = record
        manager.add_request(
            item.prompt,
            request_id=request_id,
            max_new_tokens=item.new_tokens,
            record_timestamps=True,
            eos_token_id=-1,
        )

    started = time.perf_counter()
    records = replay(trace, submit)
    waiting = set(by_id)
    while waiting:
        left = started + deadline - time.perf_counter()
        if left <= 0:
            break
        output = manager.get_result(timeout=min(left, 1.0))
        if output is None or not output.is_finished():
            continue
        record = by_id[output.request_id]
        record.token_times = list(output.timestamps or [])
        record.done = record.token_times[-1] if record.token_times else None
        waiting.discard(output.request_id)
    manager.stop(block=True)
    return summarise_run(records, time.perf_counter() - started)


# -- (d) one adapter at a time --------------------------------------------------------------
class OneAdapter:
    """A server with one active adapter: the requests waiting for the oldest request's
    expert go in one static batch (`set_adapter`, or the adapter disabled for the base)."""

    def __init__(self, pool: Any, max_batch: int = 32):
        self.pool, self.max_batch = pool, max_batch
        self.tokenizer = pool.base.tokenizer
        self.waiting: list[tuple[Item, Record]] = []
        self.cond = threading.Condition()
        self.closing = False
        self.abandoned = False  # past the deadline: what is left is not run
        self.worker = threading.Thread(target=self._loop, daemon=True)
        self.worker.start()

    def submit(self, item: Item, record: Record) -> None:
        with self.cond:
            self.waiting.append((item, record))
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.worker.join()

    def _loop(self) -> None:
        import contextlib

        import torch

        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.waiting or self.closing)
                if not self.waiting or self.abandoned:
                    return
                expert = self.waiting[0][0].expert
                group = [e for e in self.waiting if e[0].expert == expert][: self.max_batch]
                self.waiting = [e for e in self.waiting if e not in group]
            model = self.pool.model
            if expert == "base":
                context: Any = model.disable_adapter()
            else:
                model.set_adapter(expert)
                context = contextlib.nullcontext()
            pad = self.tokenizer.eos_token_id
            new_tokens = max(item.new_tokens for item, _ in group)
            ids, mask = left_padded([item.prompt for item, _ in group], pad)
            with torch.no_grad(), context:
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=pad,
                    do_sample=False,
                )
            all_at_once(group)


def run_one_adapter(setup: Setup, trace: list[Item], deadline: float) -> dict[str, Any]:
    return _run_batches(OneAdapter(setup.pool), trace, deadline)


# -- decode MFU at 32 rows, and mixing experts -----------------------------------------------
def decode_mfu(setup: Setup, rows: int = 32, new_tokens: int = 128) -> dict[str, Any]:
    """Decode FLOPs per second over the bf16 peak, 32 rows decoding together: the engine
    (its decode steps' own time) and `generate` on a static batch (total less a 1-token
    run's time, which is the prefill)."""
    import torch

    from domainlm.engine.generation import Request, Sampling
    from domainlm.engine.local import LocalEngine

    prompts = [setup.trace[i % len(setup.trace)].prompt for i in range(rows)]
    mean_prompt = statistics.mean(len(p) for p in prompts)
    context = mean_prompt + new_tokens / 2
    per_token = setup.flops_per_token(context)
    engine = LocalEngine(setup.pool, max_rows=rows, prefill_chunk=1 << 16)
    sampling = Sampling(max_new_tokens=new_tokens, ignore_eos=True)
    engine.run([Request(prompts[0], sampling=Sampling(max_new_tokens=2))])
    before = (engine.stats.decode_seconds, engine.stats.decode_tokens)
    engine.run([Request(p, EXPERTS[i % 4], sampling) for i, p in enumerate(prompts)])
    seconds = engine.stats.decode_seconds - before[0]
    tokens = engine.stats.decode_tokens - before[1]
    steps = tokens / rows
    engine.close()
    ours = tokens * per_token / seconds / (setup.peak * 1e9)

    pad = setup.pool.base.tokenizer.eos_token_id
    ids, mask = left_padded(prompts, pad)
    timings = []
    for count in (1, new_tokens):
        start = time.perf_counter()
        with torch.no_grad(), setup.pool.model.disable_adapter():
            setup.pool.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=count,
                min_new_tokens=count,
                pad_token_id=pad,
                do_sample=False,
            )
        timings.append(time.perf_counter() - start)
    generate_seconds = timings[1] - timings[0]
    theirs = rows * (new_tokens - 1) * per_token / generate_seconds / (setup.peak * 1e9)
    return {
        "rows": rows,
        "engine_mfu": ours,
        "engine_decode_tokens_per_s": tokens / seconds,
        "engine_ms_per_step": seconds / steps * 1000,
        "flops_per_token": per_token,
        "generate_mfu": theirs,
        "generate_decode_tokens_per_s": rows * (new_tokens - 1) / generate_seconds,
    }


def mixing(setup: Setup, kind: str, requests: int = 32, new_tokens: int = 64) -> float:
    """Tokens/s of `requests` requests on the engine: `mixed` (4 experts in turn), `one`
    (all on expert0) or `grouped` (one expert's 8 at a time)."""
    from domainlm.engine.generation import Request, Sampling
    from domainlm.engine.local import LocalEngine

    engine = LocalEngine(setup.pool, max_rows=requests)
    sampling = Sampling(max_new_tokens=new_tokens, ignore_eos=True)
    prompts = [setup.trace[i % len(setup.trace)].prompt for i in range(requests)]
    engine.run([Request(prompts[0], sampling=Sampling(max_new_tokens=2))])
    names = [EXPERTS[i % 4] if kind != "one" else EXPERTS[0] for i in range(requests)]
    batches = [list(range(requests))]
    if kind == "grouped":
        batches = [[i for i in range(requests) if names[i] == e] for e in EXPERTS]
    start = time.perf_counter()
    for batch in batches:
        engine.run([Request(prompts[i], names[i], sampling) for i in batch])
    seconds = time.perf_counter() - start
    engine.close()
    return requests * new_tokens / seconds


# -- set-up and report ----------------------------------------------------------------------
@dataclass
class Setup:
    pool: Any
    plain: Any  # a second copy of the base, no peft: transformers' own CB runs on it
    trace: list[Item]
    peak: float
    shape: dict[str, int]

    def flops_per_token(self, context: float) -> float:
        """Forward FLOPs of one decode token: linear layers and the output layer, plus
        attention over `context` positions."""
        s = self.shape
        return 2 * s["body"] + 2 * s["head"] + 4 * s["layers"] * s["hidden"] * context


def make_experts(base: Any, folder: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from domainlm.expert import BaseRef, ExpertCard, write_card

    paths = []
    for i, name in enumerate(EXPERTS):
        torch.manual_seed(i)
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False
        )
        model = get_peft_model(base.model, config)
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:  # small: distinct experts that still write text
                param.data.mul_(0.01)
        path = folder / name
        model.save_pretrained(path)
        base.model = model.unload()
        card = ExpertCard(
            name=name,
            base=BaseRef(model="default", content_hash=base.content_hash, chat_format="hf"),
            stage="sft",
        )
        write_card(path, card)
        paths.append(path)
    return paths


CONFIGS: dict[str, Callable[[Setup, list[Item], float], dict[str, Any]]] = {
    "domainlm": run_domainlm,
    "static": run_static,
    "transformers_cb": run_transformers_cb,
    "peft_one_adapter": run_one_adapter,
}
MIXING = ("mixed", "one", "grouped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rate", type=float, default=8.0, help="arrivals per second")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one run, in a process of its own
    parser.add_argument("--peak", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, args)))
        return
    configs = args.configs.split(",")
    peak = matmul_peak()["bf16"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    extra: dict[str, list[Any]] = {"mfu": [], **{k: [] for k in MIXING}}
    print(f"bf16 matmul peak {peak:.0f} GFLOP/s", flush=True)
    for round_ in range(args.rounds):
        for name in configs:
            result = in_own_process(name, args, peak)
            runs[name].append(result)
            print(
                f"round {round_ + 1}/{args.rounds} {name:17s} "
                f"{result['tokens_per_s']:7.1f} tokens/s  TTFT p95 "
                f"{result['ttft_p95_s'] or float('nan'):6.2f} s  finished "
                f"{result['finished']}/{result['requests']}",
                flush=True,
            )
        for kind in ("mfu", *MIXING):
            extra[kind].append(in_own_process(kind, args, peak))
        print(
            f"round {round_ + 1}/{args.rounds} decode MFU at 32 rows: engine "
            f"{extra['mfu'][-1]['engine_mfu']:.1%}, generate "
            f"{extra['mfu'][-1]['generate_mfu']:.1%}; 4 experts mixed "
            f"{extra['mixed'][-1]:.0f}, one adapter {extra['one'][-1]:.0f}, grouped "
            f"{extra['grouped'][-1]:.0f} tokens/s",
            flush=True,
        )
    import torch

    from domainlm.engine.setup import device_dtype

    _, dtype = device_dtype()
    tokenizer = _tokenizer()
    trace = make_trace(tokenizer, args.requests, args.rate, args.seed)
    report: dict[str, Any] = {
        "benchmark": "serving an arrival trace, SmolLM2-135M-Instruct + 4 LoRA experts",
        "machine": machine(dtype=str(dtype), bf16_matmul_gflops=peak)
        | {"torch_threads": torch.get_num_threads()},
        "setup": {k: v for k, v in vars(args).items() if k not in ("job", "peak")}
        | {"tokens": sum(i.new_tokens for i in trace), "arrivals_over_s": trace[-1].at},
        "runs": runs,
        "summary": {},
        "pairs": {},
    }
    metrics = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s", "finished")
    for name, results in runs.items():
        report["summary"][name] = {m: spread([r[m] for r in results]) for m in metrics}
    if "domainlm" in runs:
        ours = runs["domainlm"]
        for name in configs:
            if name == "domainlm":
                continue
            pairs = list(zip(ours, runs[name], strict=True))
            report["pairs"][f"domainlm_vs_{name}"] = {
                "tokens_per_s": spread(
                    [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs if b["tokens_per_s"]]
                ),
                "ttft_p95_lower_by": spread(
                    [
                        b["ttft_p95_s"] / a["ttft_p95_s"]
                        for a, b in pairs
                        if a["ttft_p95_s"] and b["ttft_p95_s"]
                    ]
                ),
            }
    report["decode_mfu_32_rows"] = {
        key: spread([m[key] for m in extra["mfu"]]) for key in extra["mfu"][0]
    }
    report["mixing_tokens_per_s"] = {kind: spread(extra[kind]) for kind in MIXING}
    report["pairs"]["mixed_vs_one_adapter"] = spread(
        [m / o for m, o in zip(extra["mixed"], extra["one"], strict=True)]
    )
    report["pairs"]["mixed_vs_grouped"] = spread(
        [m / g for m, g in zip(extra["mixed"], extra["grouped"], strict=True)]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"-> {RESULTS}")


def _tokenizer() -> Any:
    from domainlm.models.base import load_base

    return load_base("default").tokenizer


def in_own_process(job: str, args: argparse.Namespace, peak: float) -> Any:
    """Run one configuration (or the MFU or mixing measurement) in a fresh process, so that
    no run inherits another's allocator state, threads or caches."""
    import subprocess

    command = [
        sys.executable, __file__, "--job", job, "--peak", str(peak),
        "--requests", str(args.requests), "--rate", str(args.rate),
        "--deadline", str(args.deadline), "--seed", str(args.seed),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{job} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_job(job: str, args: argparse.Namespace) -> Any:
    from domainlm.engine.adapters import AdapterPool
    from domainlm.engine.setup import device_dtype
    from domainlm.models.base import load_base

    _, dtype = device_dtype()
    base = load_base("default", dtype=dtype)
    base.model.eval()
    plain = load_base("default", dtype=dtype).model.eval() if job == "transformers_cb" else None
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_experts(base, Path(tmp))  # seeded: the same experts in every process
        pool = AdapterPool(base, roots=[Path(tmp)])
        for path in paths:
            pool.add(path)
        trace = make_trace(base.tokenizer, args.requests, args.rate, args.seed)
        setup = Setup(pool, plain, trace, args.peak, model_shape(base.model.config.to_dict()))
        if job == "mfu":
            return decode_mfu(setup)
        if job in MIXING:
            return mixing(setup, job)
        return CONFIGS[job](setup, trace, args.deadline)


def print_report(report: dict[str, Any]) -> None:
    def show(value: dict[str, float] | None, unit: str = "", scale: float = 1.0) -> str:
        if value is None:
            return "-"
        return (
            f"{value['median'] * scale:.2f}{unit} ({value['min'] * scale:.2f}-"
            f"{value['max'] * scale:.2f})"
        )

    print("medians (min-max) over rounds:")
    for name, summary in report["summary"].items():
        print(
            f"  {name:17s} {show(summary['tokens_per_s'])} tokens/s  TTFT p50 "
            f"{show(summary['ttft_p50_s'], ' s')} p95 {show(summary['ttft_p95_s'], ' s')}  "
            f"ITL p50 {show(summary['itl_p50_s'], ' ms', 1000)} p95 "
            f"{show(summary['itl_p95_s'], ' ms', 1000)}"
        )
    for name, pair in report["pairs"].items():
        if isinstance(pair, dict) and "tokens_per_s" in pair:
            print(
                f"  {name}: tokens/s x{show(pair['tokens_per_s'])}, TTFT p95 lower by "
                f"x{show(pair['ttft_p95_lower_by'])}"
            )
        else:
            print(f"  {name}: x{show(pair)}")
    mfu = report["decode_mfu_32_rows"]
    print(
        f"  decode MFU at 32 rows: engine {show(mfu['engine_mfu'], '%', 100)}, "
        f"generate {show(mfu['generate_mfu'], '%', 100)}"
    )


if __name__ == "__main__":
    main()
