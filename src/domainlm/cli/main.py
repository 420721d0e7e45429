"""`domainlm` entry point: builds the command tree and turns user errors into one line + exit 2."""

from __future__ import annotations

import sys

import typer

from domainlm import __version__
from domainlm.cli import chat, data, demo, engine, kb, serve, synth, train
from domainlm.cli.console import err
from domainlm.cli.eval import eval_command
from domainlm.errors import DomainLMError

app = typer.Typer(
    name="domainlm",
    help="DomainLM: turn an open LLM into a domain expert and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(data.app, name="data")
app.add_typer(kb.app, name="kb")
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("export")(train.export)
app.command("ask")(chat.ask)
app.command("chat")(chat.chat)
app.command("vllm-command")(engine.vllm_command)
app.command("serve")(serve.serve)
app.command("eval")(eval_command)
app.command("synth")(synth.synth)


def _version(value: bool) -> None:
    if value:
        print(f"domainlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """DomainLM: turn an open LLM into a domain expert and serve it."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, with a one-line message).

    Typer's standalone mode prints usage errors itself and exits with 2; our own errors
    (`DomainLMError`) pass through it and are printed here, without a traceback.
    """
    try:
        app(args=argv, prog_name="domainlm")
    except DomainLMError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
