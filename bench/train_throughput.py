"""Training throughput: DomainLM's trainer against TRL's SFTTrainer, same run, same machine.

    python bench/train_throughput.py            (or `make bench`)

Both train the same LoRA (r=8, alpha=16, dropout 0, all-linear) on SmolLM2-135M-Instruct
(the `default` base) for one epoch over the same 96 conversations, 4 sequences of at most
256 tokens per step, learning rate 2e-4. TRL runs at its own defaults otherwise (bf16,
gradient checkpointing, padded batches); DomainLM at its own (bf16 autocast over a bf16
base with fp32 LoRA weights, packed rows, chunked loss on trained tokens). Each trainer
runs in its own process so peak memory is its own.

Reported: real (non-padding) tokens per second of training, the ratio, peak resident
memory, and MFU: model FLOPs per second over this machine's measured bf16 matmul peak.
Model FLOPs per token = 2 x forward (forward plus the input-gradient backward; a LoRA run
computes no base-weight gradients), forward = 2 x (linear parameters) + 4 x layers x
hidden x mean attended context; the output layer counts at every position for TRL (its
default loss covers every token) and at trained positions for DomainLM.
Results go to bench/results/train.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "train.json"
EXAMPLES = ROOT / "examples" / "data"
CONVERSATIONS = 96
SEQ, BATCH, LR = 256, 4, 2e-4
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def matmul_peak() -> dict[str, float]:
    """Measured GFLOP/s of a 2048x2048 matmul in bf16 and fp32."""
    import torch

    peak = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            best = min(best, (time.perf_counter() - start) / 5)
        peak[name] = 2 * 2048**3 / best / 1e9
    return peak


def write_data(folder: Path) -> Path:
    """96 chat conversations (no tools, so both trainers read them) from the examples."""
    from domainlm.data.pipeline import LoadOptions, load

    files = ["openai_messages.jsonl", "sharegpt.json", "alpaca.json", "prompt_response.jsonl"]
    report = load([EXAMPLES / f for f in files], LoadOptions(allow_duplicates=True))
    plain = [
        [{"role": m.role, "content": m.content} for m in c.messages]
        for c in report.conversations
        if not c.tools and all(m.role in ("system", "user", "assistant") for m in c.messages)
    ]
    path = folder / "data.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(CONVERSATIONS):
            handle.write(json.dumps({"messages": plain[i % len(plain)]}, ensure_ascii=False) + "\n")
    return path


def model_shape(folder: Path) -> dict[str, int]:
    config = json.loads((folder / "config.json").read_text())
    d, layers, ff = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads, kv = (
        config["num_attention_heads"],
        config.get("num_key_value_heads") or config["num_attention_heads"],
    )
    head_dim = config.get("head_dim") or d // heads
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * ff
    return {
        "body": layers * per_layer,
        "head": d * config["vocab_size"],
        "layers": layers,
        "hidden": d,
    }


def flops_per_token(shape: dict[str, int], head_fraction: float, mean_context: float) -> float:
    forward = 2 * shape["body"] + 2 * shape["head"] * head_fraction
    forward += 4 * shape["layers"] * shape["hidden"] * mean_context
    return 2 * forward


def run_domainlm(data: Path, work: Path) -> dict[str, Any]:
    from domainlm.train.recipe import Recipe
    from domainlm.train.trainer import train

    recipe = Recipe.model_validate(
        {
            "name": "bench",
            "base": {"path": "default", "chat_format": "hf"},
            "datasets": [{"path": str(data)}],
            "lora": LORA,
            "optim": {"epochs": 1, "batch_size": BATCH, "max_seq_len": SEQ, "lr": LR},
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
    }


def run_trl(data: Path, work: Path) -> dict[str, Any]:
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
        max_length=SEQ,
        num_train_epochs=1,
        learning_rate=LR,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        use_cpu=True,
        seed=42,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=AutoTokenizer.from_pretrained(folder),
        peft_config=LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
            target_modules=LORA["target_modules"], task_type="CAUSAL_LM",
        ),
    )  # fmt: skip
    lengths = [min(len(ids), SEQ) for ids in trainer.train_dataset["input_ids"]]
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


def worker(name: str, data: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        result = (run_domainlm if name == "domainlm" else run_trl)(data, Path(work))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


def measure(name: str, data: Path, folder: Path) -> dict[str, Any]:
    out = folder / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--worker", name, str(data), str(out)], check=True, env=env
    )
    result: dict[str, Any] = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def main() -> None:
    import torch

    from domainlm.models.base import convert_gguf, default_model_file

    folder, _ = convert_gguf(default_model_file())  # convert once, outside the timings
    peak = matmul_peak()
    shape = model_shape(folder)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp))
        ours = measure("domainlm", data, Path(tmp))
        trl = measure("trl", data, Path(tmp))
    # Packed and padded rows hold examples of the same mean length; attention sees half.
    context = trl["mean_length"] / 2
    for result, head_fraction in ((ours, ours["trained_tokens"] / ours["tokens"]), (trl, 1.0)):
        result["flops_per_token"] = flops_per_token(shape, head_fraction, context)
        result["mfu"] = result["tokens_per_s"] * result["flops_per_token"] / (peak["bf16"] * 1e9)
    report = {
        "benchmark": "LoRA SFT throughput, SmolLM2-135M-Instruct, 1 epoch",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "matmul_gflops": peak,
        },
        "setup": {"conversations": CONVERSATIONS, "seq": SEQ, "batch": BATCH, "lora": LORA},
        "domainlm": ours,
        "trl_sft_trainer": trl,
        "ratio_tokens_per_s": ours["tokens_per_s"] / trl["tokens_per_s"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bf16 matmul peak {peak['bf16']:.0f} GFLOP/s (fp32 {peak['fp32']:.0f})")
    for name, result in (("DomainLM", ours), ("TRL SFTTrainer", trl)):
        print(
            f"{name:15s} {result['tokens_per_s']:7.1f} tokens/s  MFU {result['mfu']:5.1%}  "
            f"peak RSS {result['peak_rss_mb']:6.0f} MB  ({result['steps']} steps, "
            f"{result['seconds']:.1f} s)"
        )
    print(f"ratio (DomainLM / TRL): {report['ratio_tokens_per_s']:.2f}x  -> {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
