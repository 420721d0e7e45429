"""`domainlm eval SUITE --models base,EXPERT,...`: run a suite and write its reports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from domainlm.cli.console import err, out
from domainlm.errors import DomainLMError


def eval_command(
    suite_file: Annotated[Path, typer.Argument(help="Suite YAML (see recipes/eval/).")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Suite settings to override, as key=value (tasks.0.limit=5)."),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated: base and expert names (local) or the endpoint's model "
            "ids; the first is the reference for deltas. Default: the suite's.",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Local base: HF folder, `default` or `tiny`.")
    ] = "default",
    experts: Annotated[
        Path | None, typer.Option("--experts", help="Folder of expert directories to load.")
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Local weights: auto (bf16 where fast, else fp32), float32 or bfloat16.",
        ),
    ] = "auto",
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", help="An OpenAI-compatible /v1 URL instead of local models."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="The endpoint's key (default: $DOMAINLM_EVAL_API_KEY or none)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: eval-runs/SUITE).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out, skipping finished items.")
    ] = False,
) -> None:
    """Run an evaluation suite on the base and experts (or an endpoint); write results.jsonl,
    summary.json, report.md and report.html."""
    from domainlm.eval.evaluate import evaluate, local_models, progress_bar
    from domainlm.eval.models import EndpointModels
    from domainlm.eval.run import plan
    from domainlm.eval.suite import load_suite
    from domainlm.eval.summary import SHARES

    suite = load_suite(suite_file, overrides)
    names = [n.strip() for n in (models or ",".join(suite.models)).split(",") if n.strip()]
    if not names:
        raise DomainLMError("--models: name at least one model")
    plan(suite)  # a data file that does not load is an error before any model loads
    folder = output or Path("eval-runs") / suite.name
    if endpoint:
        backend = EndpointModels(
            endpoint, api_key or os.environ.get("DOMAINLM_EVAL_API_KEY"), names
        )
        backend.check()
    else:
        err.print(f"loading {model} …", markup=False, highlight=False)
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise DomainLMError(f"--dtype {dtype}: choose auto, float32, bfloat16 or float16")
        backend = local_models(model, experts, dtype=dtype)
    try:
        with progress_bar(err, suite.name) as progress:
            summary = evaluate(suite, backend, names, folder, resume, progress)
    except KeyboardInterrupt:
        err.print(
            f"stopped: finished items are in {folder}/results.jsonl; add --resume to continue",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(130) from None
    finally:
        backend.close()
    for part in summary["parts"]:
        cells = []
        for name, entry in part["models"].items():
            value = entry["value"]
            scale = 100 if part["metric"] in SHARES else 1
            cells.append(f"{name} {value * scale:.1f}" if value is not None else f"{name} –")
        out.print(
            f"{part['task']} ({part['scorer']}): " + ", ".join(cells), markup=False, highlight=False
        )
    out.print(f"report: {folder / 'report.html'}", markup=False, highlight=False)
