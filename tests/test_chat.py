"""`domainlm chat` and `ask` as a user drives them: lines on stdin, a scripted model (what
the model says is not the point here), and a real Ctrl-C during a reply."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from domainlm.engine.generation import Completion, Request, Stream
from domainlm.engine.local import LocalEngine
from domainlm.kb.base import build
from domainlm.models import build_tiny_tokenizer
from tests.test_kb import make_law_db


class ScriptedModel:
    """Stands in for the model behind the CLI: the scripted replies in order (streamed in
    two-character pieces), and every prompt as text."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, replies: list[str]):
        self.replies, self.prompts = list(replies), []
        model = self

        def run(engine: LocalEngine, requests: list[Request]) -> list[Completion]:
            model.prompts.append(engine.tokenizer.decode(requests[0].prompt))
            return [Completion(model.replies.pop(0), 1, "stop")]

        def submit(engine: LocalEngine, request: Request) -> Stream:
            model.prompts.append(engine.tokenizer.decode(request.prompt))
            reply = model.replies.pop(0)
            stream = Stream(request)
            for i in range(0, len(reply), 2):
                stream.push(reply[i : i + 2])
            stream.finish(Completion(reply, 1, "stop", len(request.prompt)))
            return stream

        monkeypatch.setattr(LocalEngine, "run", run)
        monkeypatch.setattr(LocalEngine, "submit", submit)


def chat(cli: Any, monkeypatch: pytest.MonkeyPatch, lines: list[str], *args: str) -> Any:
    """`domainlm chat --model tiny ARGS` with `lines` typed, then Ctrl-D."""
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    return cli("chat", "--model", "tiny", *args)


@pytest.fixture(scope="module")
def law_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat_kb")
    build(folder / "kb", [str(make_law_db(folder / "laws.db"))], workers=1)
    return folder / "kb"


def test_kb_off_drops_the_kept_articles(
    cli: Any, monkeypatch: pytest.MonkeyPatch, law_kb: Path
) -> None:
    model = ScriptedModel(monkeypatch, ["定金不得超过主合同标的额的百分之二十。", "你好！"])
    code, out, err = chat(
        cli, monkeypatch, ["什么是定金？", "/kb off", "你好"], "--kb", str(law_kb)
    )
    assert code == 0, err
    article = "定金合同自实际交付定金时成立"
    assert article in model.prompts[0]
    assert article not in model.prompts[1] and "检索到的可能相关的法条" not in model.prompts[1]
    first, second = out.split("knowledge base off")
    assert "articles:" in first and "articles:" not in second


def test_save_errors_are_one_line_and_the_chat_goes_on(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ScriptedModel(monkeypatch, ["你好！", "再见！"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    lines = ["你好", f"/save {tmp_path}", f"/save {blocker}/chat.json", "/save", "再见"]
    lines.append(f"/save {tmp_path}/new/chat.json")
    code, _, err = chat(cli, monkeypatch, lines)
    assert code == 0, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path}: is a folder, expected a file path",
        f"error: cannot write {blocker}/chat.json: {blocker} is a file, not a folder",
        "error: /save needs a file name",
    ]
    saved = json.loads((tmp_path / "new" / "chat.json").read_text(encoding="utf-8"))
    assert [m["content"] for m in saved["messages"]] == ["你好", "你好！", "再见", "再见！"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_empty_lines_are_not_sent_and_ctrl_c_at_the_prompt_ends_the_chat(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ScriptedModel(monkeypatch, ["你好！"])
    lines = iter(["", "   ", "\u3000", "你好"])

    def typed(prompt: str = "") -> str:
        line = next(lines, None)
        if line is None:
            raise KeyboardInterrupt  # Ctrl-C at an empty prompt
        return line

    monkeypatch.setattr("builtins.input", typed)
    code, out, err = cli("chat", "--model", "tiny")
    assert code == 0 and len(model.prompts) == 1, (out, err)


#: `domainlm chat` on the tiny model made slow (50 ms a token) and unable to end its reply
#: by itself, so that Ctrl-C surely falls inside a reply; says "generating" when it starts.
SLOW_CHAT = """
import signal, sys, time
import domainlm.engine.setup as setup

# As in a terminal: a job started in the background by a shell (as CI may start the
# tests) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
from domainlm.cli.main import main

build = setup.build_assistant

def slow(*args, **kwargs):
    assistant = build(*args, **kwargs)
    eos = assistant.pool.base.tokenizer.eos_token_id
    started = []

    def step(module, inputs, output):
        output.logits[..., eos] = float("-inf")
        if not started:
            started.append(1)
            print("generating", file=sys.stderr, flush=True)
        time.sleep(0.05)
        return output

    assistant.pool.model.register_forward_hook(step)
    return assistant

setup.build_assistant = slow
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_stops_the_reply_not_the_chat(tmp_path: Path) -> None:
    saved = tmp_path / "chat.json"
    chat = subprocess.Popen(
        [sys.executable, "-c", SLOW_CHAT, "chat", "--model", "tiny", "--max-new-tokens", "1000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert chat.stdin is not None and chat.stderr is not None
    chat.stdin.write("你好\n")
    chat.stdin.flush()
    for line in chat.stderr:
        if "generating" in line:
            break
    time.sleep(0.5)  # some of the reply is out
    chat.send_signal(signal.SIGINT)
    # Then save and Ctrl-D at the prompt.
    out, err = chat.communicate(f"/save {saved}\n", timeout=120)
    assert chat.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    messages = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] and messages[1]["content"] in out  # the partial reply, kept
    # Cut short, not the 1000 tokens the whole reply would have been.
    assert len(build_tiny_tokenizer()(messages[1]["content"])["input_ids"]) < 500
