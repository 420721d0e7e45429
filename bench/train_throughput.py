"""Training throughput and memory: DomainLM's trainer against TRL's SFTTrainer, same runs,
same machine.

    python bench/train_throughput.py            (or `make bench`)

Both train the same LoRA on SmolLM2-135M-Instruct (the `default` base), learning rate
2e-4, 4 sequences per step, in two workloads:

- `short`: one epoch over 32 chat conversations (mean ~160 tokens), sequences of at most
  256 tokens, LoRA r=8, alpha=16, dropout 0, all-linear: DomainLM packs them into full
  rows, TRL pads each batch.
- `long`: 8 multi-turn conversations of more than 1024 tokens, cut to 1024 by both, so
  every step is 4 x 1024 tokens for both (2 steps), with the LoRA of
  recipes/smollm2_law_sft.yaml (r=16, alpha=32, dropout 0.05, all-linear): the memory a
  long-context run needs. DomainLM runs twice here, at its defaults and with
  `optim.gradient_checkpointing`.

TRL runs at its own defaults otherwise (bf16, gradient checkpointing, padded batches, loss
on every token); DomainLM at its own (bf16 autocast over a bf16 base with fp32 LoRA
weights, packed rows, loss on trained tokens). Each run is its own process, so its peak
resident memory (ru_maxrss, model loading included) is its own; the trainers take turns,
round after round (5 rounds), and the report gives medians with min-max.

Reported: real (non-padding) tokens per second of training, the ratio, peak RSS, and MFU:
model FLOPs per second over this machine's measured bf16 matmul peak. Model FLOPs per
token = 2 x forward (forward plus the input-gradient backward; a LoRA run computes no
base-weight gradients), forward = 2 x (linear parameters) + 4 x layers x hidden x mean
attended context; the output layer counts at every position for TRL (its default loss
covers every token) and at trained positions for DomainLM.
Results go to bench/results/train.json.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import machine, matmul_peak, model_shape, spread

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train.json"
EXAMPLES = ROOT / "examples" / "data"
ROUNDS = 5
BATCH, LR = 4, 2e-4
#: workload: (conversations, longest sequence, conversations of more than `seq` tokens)
WORKLOADS = {"short": (32, 256, False), "long": (8, 1024, True)}
LORA = {
    "short": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
    "long": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
}
#: Who runs each workload, in turn.
TRAINERS = {"short": ["domainlm", "trl"], "long": ["domainlm", "domainlm_gc", "trl"]}


def plain_conversations() -> list[list[dict[str, str]]]:
    """The example chat conversations without tools (both trainers read them)."""
    from domainlm.data.pipeline import LoadOptions, load

    files = ["openai_messages.jsonl", "sharegpt.json", "alpaca.json", "prompt_response.jsonl"]
    report = load([EXAMPLES / f for f in files], LoadOptions(allow_duplicates=True))
    return [
        [{"role": m.role, "content": m.content or ""} for m in c.messages]
        for c in report.conversations
        if not c.tools and all(m.role in ("system", "user", "assistant") for m in c.messages)
    ]


def write_data(folder: Path, workload: str, tokenizer: Any) -> Path:
    """The workload's conversations as Conversation JSONL; long ones join example
    conversations into multi-turn ones until the chat template gives more than `seq` tokens."""
    count, seq, long = WORKLOADS[workload]
    plain = plain_conversations()
    records, at = [], 0
    for _ in range(count):
        messages = plain[at % len(plain)]
        at += 1
        while long and _length(tokenizer, messages) <= seq + 64:
            messages = messages + [m for m in plain[at % len(plain)] if m["role"] != "system"]
            at += 1
        records.append({"messages": messages})
    path = folder / f"{workload}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


def model_shape_of(folder: Path) -> dict[str, int]:
    return model_shape(json.loads((folder / "config.json").read_text()))


def flops_per_token(shape: dict[str, int], head_fraction: float, mean_context: float) -> float:
    forward = 2 * shape["body"] + 2 * shape["head"] * head_fraction
    forward += 4 * shape["layers"] * shape["hidden"] * mean_context
    return 2 * forward


def run_domainlm(
    data: Path, work: Path, seq: int, lora: dict[str, Any], checkpointing: bool
) -> dict[str, Any]:
    from domainlm.train.recipe import Recipe
    from domainlm.train.trainer import train

    recipe = Recipe.model_validate(
        {
            "name": "bench",
            "base": {"path": "default", "chat_format": "hf"},
            "datasets": [{"path": str(data)}],
            "lora": lora,
            "optim": {
                "epochs": 1,
                "batch_size": BATCH,
                "max_seq_len": seq,
                "lr": LR,
                "gradient_checkpointing": checkpointing,
            },
            "eval": {"samples": 0},
            "save_steps": 100000,
            "output_dir": str(work),
        }
    )
    folder = train(recipe)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    card = __import__("yaml").safe_load((folder / "expert.yaml").read_text())
    tokens = sum(row["tokens"] for row in rows)
    seconds = sum(row["tokens"] / row["tokens_per_s"] for row in rows)
    return {
        "tokens": tokens,
        "trained_tokens": card["metrics"]["trained_tokens"],
        "seconds": seconds,
        "steps": len(rows),
        "final_loss": rows[-1]["loss"],
        "gradient_checkpointing": checkpointing,
    }


def run_trl(data: Path, work: Path, seq: int, lora: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from domainlm.models.base import convert_gguf, default_model_file

    folder, _ = convert_gguf(default_model_file())
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    config = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=BATCH,
        max_length=seq,
        num_train_epochs=1,
        learning_rate=LR,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        use_cpu=True,
        seed=42,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=AutoTokenizer.from_pretrained(folder),
        peft_config=LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"], task_type="CAUSAL_LM",
        ),
    )  # fmt: skip
    lengths = [min(len(ids), seq) for ids in trainer.train_dataset["input_ids"]]
    result = trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {
        "tokens": sum(lengths),
        "trained_tokens": sum(lengths),
        "seconds": result.metrics["train_runtime"],
        "steps": result.global_step,
        "final_loss": losses[-1] if losses else None,
        "bf16": bool(config.bf16),
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "mean_length": sum(lengths) / len(lengths),
    }


def worker(name: str, workload: str, data: Path, out: Path) -> None:
    seq, lora = WORKLOADS[workload][1], LORA[workload]
    with tempfile.TemporaryDirectory() as work:
        if name == "trl":
            result = run_trl(data, Path(work), seq, lora)
        else:
            result = run_domainlm(data, Path(work), seq, lora, name == "domainlm_gc")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


def measure(name: str, workload: str, data: Path, folder: Path) -> dict[str, Any]:
    out = folder / f"{name}-{workload}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--worker", name, workload, str(data), str(out)],
        check=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians with min-max of the measured numbers; the run's fixed facts once."""
    measured = ("tokens_per_s", "peak_rss_mb", "seconds", "wall_seconds", "mfu")
    summary: dict[str, Any] = {key: spread([r[key] for r in runs]) for key in measured}
    fixed = ("tokens", "trained_tokens", "steps", "gradient_checkpointing", "mean_length", "bf16")
    summary.update({key: runs[0][key] for key in fixed if key in runs[0]})
    summary["final_loss"] = spread([r["final_loss"] for r in runs if r["final_loss"] is not None])
    summary["runs"] = len(runs)
    return summary


def main() -> None:
    from transformers import AutoTokenizer

    from domainlm.models.base import convert_gguf, default_model_file

    folder, _ = convert_gguf(default_model_file())  # convert once, outside the timings
    tokenizer = AutoTokenizer.from_pretrained(folder)
    peak = matmul_peak()
    shape = model_shape_of(folder)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w: {} for w in WORKLOADS}
    with tempfile.TemporaryDirectory() as tmp:
        data = {w: write_data(Path(tmp), w, tokenizer) for w in WORKLOADS}
        for round_ in range(ROUNDS):
            for workload, trainers in TRAINERS.items():
                for name in trainers:
                    print(f"round {round_ + 1}/{ROUNDS}: {workload} {name}", flush=True)
                    result = measure(name, workload, data[workload], Path(tmp))
                    runs[workload].setdefault(name, []).append(result)
    report: dict[str, Any] = {
        "benchmark": "LoRA SFT throughput and peak memory, SmolLM2-135M-Instruct",
        "machine": machine(matmul_gflops=peak),
        "setup": {"workloads": WORKLOADS, "batch": BATCH, "lora": LORA, "rounds": ROUNDS},
    }
    print(f"bf16 matmul peak {peak['bf16']:.0f} GFLOP/s (fp32 {peak['fp32']:.0f})")
    for workload, by_name in runs.items():
        trl_mean_length = by_name["trl"][0]["mean_length"]
        context = trl_mean_length / 2  # padded or packed rows: attention sees half on average
        for name, results in by_name.items():
            own = name != "trl"
            for result in results:
                head = result["trained_tokens"] / result["tokens"] if own else 1.0
                result["flops_per_token"] = flops_per_token(shape, head, context)
                result["mfu"] = (
                    result["tokens_per_s"] * result["flops_per_token"] / (peak["bf16"] * 1e9)
                )
        section = {name: summarise(results) for name, results in by_name.items()}
        ours = [r["tokens_per_s"] for r in by_name["domainlm"]]
        theirs = [r["tokens_per_s"] for r in by_name["trl"]]
        section["ratio_tokens_per_s"] = statistics.median(ours) / statistics.median(theirs)
        # Per-pair ratios: each round's runs took turns on the machine, so a noisy stretch
        # shows in both members of a pair rather than in one trainer's numbers.
        for name in by_name:
            if name == "trl":
                continue
            pairs = zip(by_name[name], by_name["trl"], strict=True)
            section[f"pair_ratios_{name}_vs_trl"] = {
                "tokens_per_s": spread([a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]),
                "peak_rss": spread(
                    [
                        a["peak_rss_mb"] / b["peak_rss_mb"]
                        for a, b in zip(by_name[name], by_name["trl"], strict=True)
                    ]
                ),
            }
        report[workload] = section
        report.setdefault("runs", {})[workload] = by_name  # every run, before any printing
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{workload} (seq {WORKLOADS[workload][1]}, batch {BATCH}), {ROUNDS} runs each:")
        for name, summary in section.items():
            if not isinstance(summary, dict) or name.startswith("pair_ratios_"):
                continue
            speed, rss = summary["tokens_per_s"], summary["peak_rss_mb"]
            print(
                f"  {name:12s} {speed['median']:7.1f} tokens/s ({speed['min']:.1f}-"
                f"{speed['max']:.1f})  MFU {summary['mfu']['median']:5.1%}  peak RSS "
                f"{rss['median']:6.0f} MB ({rss['min']:.0f}-{rss['max']:.0f})  "
                f"({summary['steps']} steps)"
            )
        print(f"  ratio (DomainLM / TRL tokens/s): {section['ratio_tokens_per_s']:.2f}x")
        for key, pair in section.items():
            if key.startswith("pair_ratios_"):
                speed, rss = pair["tokens_per_s"], pair["peak_rss"]
                print(
                    f"  {key[len('pair_ratios_') :]}: tokens/s x{speed['median']:.2f} "
                    f"({speed['min']:.2f}-{speed['max']:.2f}), peak RSS x{rss['median']:.2f} "
                    f"({rss['min']:.2f}-{rss['max']:.2f})"
                )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
