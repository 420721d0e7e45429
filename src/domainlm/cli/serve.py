"""`domainlm serve CONFIG [key=value ...]`: the OpenAI-compatible API and web chat."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from domainlm.cli.console import err, out


def serve(
    config: Annotated[
        Path | None, typer.Argument(help="Settings YAML (see recipes/serve.yaml); none: defaults.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Settings to override, as key=value (e.g. port=8080 engine.max_rows=16)."
        ),
    ] = None,
    print_vllm_command: Annotated[
        bool,
        typer.Option(
            "--print-vllm-command",
            help="Print the vLLM command serving this base and these experts, and exit.",
        ),
    ] = False,
) -> None:
    """Serve the base, every expert and every assistant profile as OpenAI models."""
    from domainlm.serve.settings import load_settings

    if config is not None and "=" in str(config) and not config.exists():
        overrides, config = [str(config), *(overrides or [])], None
    settings = load_settings(config, overrides)
    if print_vllm_command:
        from domainlm.engine.vllm import vllm_plan

        plan = vllm_plan(settings.model, settings.experts[0] if settings.experts else None)
        for reason in plan.skipped.values():
            err.print(f"warning: {reason}", markup=False, highlight=False, soft_wrap=True)
        out.print(
            plan.shell("127.0.0.1", 8001, "base"), markup=False, highlight=False, soft_wrap=True
        )
        return
    import uvicorn

    from domainlm.serve.app import DrainingServer, create_app
    from domainlm.serve.runtime import build_runtime

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err.print(f"loading {settings.model} …", markup=False, highlight=False)
    runtime = build_runtime(settings)
    app = create_app(runtime)
    models = ", ".join(app.state.server.model_ids())
    err.print(
        f"serving {models} at http://{settings.host}:{settings.port}/v1 "
        f"(web chat at http://{settings.host}:{settings.port}/)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    server_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.grace_s) + 1,
    )
    DrainingServer(server_config).run()
