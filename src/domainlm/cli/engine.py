"""`domainlm vllm-command`: the vLLM command that serves a base and its experts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from domainlm.cli.console import err, out


def vllm_command(
    model: Annotated[str, typer.Argument(help="Local HF folder, .gguf file or `default`.")],
    experts: Annotated[
        Path | None, typer.Option("--experts", help="Folder of expert directories to serve.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address vLLM listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Its port.")] = 8000,
    name: Annotated[str, typer.Option("--name", help="The base model's name there.")] = "base",
) -> None:
    """Print the vLLM command serving MODEL with every expert under --experts as a LoRA
    module (the engine's upstream backend then reads them from vLLM's model list)."""
    from domainlm.engine.vllm import vllm_plan

    plan = vllm_plan(model, experts)
    for reason in plan.skipped.values():
        err.print(f"warning: {reason}", markup=False, highlight=False, soft_wrap=True)
    out.print(plan.shell(host, port, name), markup=False, highlight=False, soft_wrap=True)
    err.print(
        f"then point the engine at http://{host}:{port}/v1 (upstream backend); "
        f"experts served: {', '.join(plan.experts) or 'none'}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
