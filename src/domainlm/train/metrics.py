"""What a training run writes beside its adapter: the metrics rows and the loss plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainlm.expert import read_metrics
from domainlm.io import atomic_write


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only rows up to `last_step` (a resumed run rewrites what came after)."""
    rows = [row for row in read_metrics(path) if row["step"] <= last_step]
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def plot_loss(metrics: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss (and eval loss where measured) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    train = [(row["step"], row["loss"]) for row in metrics if "loss" in row]
    evals = [(row["step"], row["eval_loss"]) for row in metrics if "eval_loss" in row]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
