"""What the benchmarks share: this machine's matmul peak and a model's FLOP counts."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def matmul_peak() -> dict[str, float]:
    """Measured GFLOP/s of a 2048x2048 matmul in bf16 and fp32 (the best of 5), measured in
    a process of its own: the probe's big buffers leave this process's allocator in a state
    that made the engine's later decode steps (many small tensors) up to 1.7x slower."""
    import json
    import subprocess

    code = "import json, benchlib; print(json.dumps(benchlib._probe()))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        check=True,
    )
    peak: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return peak


def _probe() -> dict[str, float]:
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


def model_shape(config: dict[str, Any]) -> dict[str, int]:
    """Linear parameters of the layers (`body`) and the output layer (`head`) of a
    decoder's config.json."""
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


def spread(values: list[float | None]) -> dict[str, float] | None:
    """Median, min and max of the values measured (None: nothing was)."""
    measured = [v for v in values if v is not None]
    if not measured:
        return None
    return {"median": statistics.median(measured), "min": min(measured), "max": max(measured)}


def machine(**extra: Any) -> dict[str, Any]:
    """What a result was measured on."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **extra,
    }
