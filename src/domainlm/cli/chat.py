"""`domainlm ask` (one question) and `domainlm chat` (a conversation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from domainlm.cli.console import err, out
from domainlm.errors import DomainLMError

if TYPE_CHECKING:
    from domainlm.engine.assistant import Assistant, Reply, Session

Model = Annotated[
    str,
    typer.Option("--model", "-m", help="Local HF folder, .gguf file, `default` or `tiny`."),
]
Experts = Annotated[
    Path | None, typer.Option("--experts", help="Folder of expert directories to load.")
]
Expert = Annotated[
    str | None, typer.Option("--expert", "-e", help="Expert name, `auto` (routed) or `base`.")
]
Kb = Annotated[Path | None, typer.Option("--kb", help="Knowledge base folder for grounding.")]
Tools = Annotated[
    list[str] | None, typer.Option("--tools", help="Toolsets: finance, code (repeatable).")
]
Format = Annotated[
    str,
    typer.Option(
        "--chat-format",
        help="auto (chatglm3 for ChatGLM3's tokenizer, else hf: the tokenizer's own template), "
        "hf or chatglm3.",
    ),
]
MaxTokens = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Reply length limit.")]
Temperature = Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")]


def _assistant(
    model: str, experts: Path | None, kb: Path | None, tools: list[str] | None,
    chat_format: str, max_new_tokens: int, temperature: float,
) -> Assistant:  # fmt: skip
    from domainlm.engine.generation import Sampling
    from domainlm.engine.setup import build_assistant

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    with err.status(f"loading {model} …"):
        assistant = build_assistant(model, experts, kb, tools, chat_format, sampling=sampling)
    for reason in assistant.pool.skipped.values():
        err.print(f"warning: {reason}", markup=False, highlight=False, soft_wrap=True)
    return assistant


def print_reply(reply: Reply, text: bool = True) -> None:
    """The answer (unless already streamed), then the articles, citation checks, tool trace."""
    out.print(f"[bold]{reply.expert}[/bold] ({reply.route})")
    if text:
        out.print(reply.text or "(empty reply)", markup=False, highlight=False)
    for observation in reply.tool_trace:
        mark = "✓" if observation.ok else "✗"
        args = json.dumps(observation.arguments, ensure_ascii=False)
        out.print(f"  tool {mark} {observation.name}({args}) → {observation.content}", markup=False)
    if reply.articles:
        out.print("[dim]articles:[/dim] " + "; ".join(a.citation for a in reply.articles))
    for citation in reply.citations:
        mark = "✗" if citation in reply.unverified else "✓"
        out.print(
            f"  citation {mark} {citation.text}: {citation.verdict} {citation.detail}", markup=False
        )


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    model: Model = "default",
    experts: Experts = None,
    expert: Expert = None,
    kb: Kb = None,
    tools: Tools = None,
    chat_format: Format = "auto",
    max_new_tokens: MaxTokens = 256,
    temperature: Temperature = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="The whole reply as JSON.")] = False,
) -> None:
    """Answer one question (with retrieval, tools and citation checks when given)."""
    from domainlm.engine.assistant import Session

    if not question.strip():
        raise DomainLMError("the question is empty")
    assistant = _assistant(model, experts, kb, tools, chat_format, max_new_tokens, temperature)
    try:
        reply = assistant.reply(Session(), question, expert=expert)
    finally:
        assistant.close()
    if as_json:
        out.print(json.dumps(reply.to_dict(), ensure_ascii=False), markup=False, highlight=False)
    else:
        print_reply(reply)


HELP = "/expert NAME|auto|base  /kb on|off  /clear  /save FILE  /quit"


def chat(
    model: Model = "default",
    experts: Experts = None,
    expert: Expert = None,
    kb: Kb = None,
    tools: Tools = None,
    chat_format: Format = "auto",
    max_new_tokens: MaxTokens = 256,
    temperature: Temperature = 0.0,
) -> None:
    """Chat in the terminal. Commands: /expert, /kb on|off (off: no articles in the
    prompt), /clear, /save FILE, /quit. Ctrl-C stops the reply being written (what was
    shown of it stays in the conversation); Ctrl-C or Ctrl-D at the prompt ends the chat."""
    from domainlm.engine.assistant import Session

    assistant = _assistant(model, experts, kb, tools, chat_format, max_new_tokens, temperature)
    try:
        _conversation(assistant, Session(expert=expert), {"kb": kb is not None})
    finally:
        assistant.close()


def _conversation(assistant: Assistant, session: Session, state: dict[str, bool]) -> None:
    """The chat's read-answer loop, until /quit, Ctrl-D or Ctrl-C at the prompt."""
    out.print(f"experts: {', '.join(assistant.pool.names)}   {HELP}", markup=False)
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.print("")
            return
        if not line:
            continue  # nothing typed: nothing sent
        if line.startswith("/"):
            if _command(line, assistant, session, state):
                return
            continue
        try:
            _reply(assistant, session, line, state["kb"])
        except KeyboardInterrupt:
            out.print("")
            err.print("stopped (what was shown of the reply is kept)", markup=False)
        except DomainLMError as exc:
            err.print(f"error: {exc}", markup=False)


def _reply(assistant: Assistant, session: Session, line: str, use_kb: bool) -> None:
    """One exchange: the answer streamed as it is written where it can be (a reply that
    may call tools is shown when done), then the articles, citation checks, tool trace."""
    status = err.status("thinking …")
    status.start()
    streamed: list[str] = []

    def show(piece: str) -> None:
        if not streamed:
            status.stop()
        streamed.append(piece)
        out.print(piece, end="", markup=False, highlight=False)

    try:
        reply = assistant.reply(session, line, expert=session.expert, use_kb=use_kb, on_text=show)
    finally:
        status.stop()
    if streamed:
        out.print("")
    print_reply(reply, text=not streamed)


def _command(line: str, assistant: Assistant, session: Session, state: dict[str, bool]) -> bool:
    """Handle a /command; True to quit."""
    word, _, argument = line.partition(" ")
    argument = argument.strip()
    if word in ("/quit", "/exit"):
        return True
    if word == "/clear":
        session.messages.clear()
        session.articles.clear()
        out.print("cleared", markup=False)
    elif word == "/expert":
        try:
            if argument != "auto":
                assistant.pool.resolve(argument)
        except DomainLMError as exc:
            err.print(f"{exc}", markup=False, highlight=False)
        else:
            session.expert = argument
            out.print(f"expert: {argument}", markup=False)
    elif word == "/kb" and argument in ("on", "off"):
        if argument == "on" and assistant.kb is None:
            err.print("no knowledge base loaded (start with --kb DIR)", markup=False)
        else:
            state["kb"] = argument == "on"
            if argument == "off":
                session.articles.clear()  # the articles kept for follow-ups go too
            out.print(f"knowledge base {argument}", markup=False)
    elif word == "/save":
        _save(session, argument)
    else:
        err.print(HELP, markup=False)
    return False


def _save(session: Session, path: str) -> None:
    """Write the conversation to `path` (atomically); a failure is one line, the chat
    goes on."""
    from domainlm.io import atomic_write

    if not path:
        err.print("error: /save needs a file name", markup=False, highlight=False)
        return
    records = [m.to_record() for m in session.messages]
    try:
        # The nearest existing folder on the way (atomic_write makes the missing ones).
        above = next((p for p in Path(path).absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise DomainLMError(f"cannot write {path}: {above} is a file, not a folder")
        with atomic_write(path) as handle:
            handle.write(json.dumps({"messages": records}, ensure_ascii=False) + "\n")
    except DomainLMError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return
    out.print(f"saved {len(records)} messages to {path}", markup=False)
