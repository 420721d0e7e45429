"""The trainer end to end on the tiny model: files written, memorisation, errors, manifests."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from domainlm.chat.conversation import Conversation
from domainlm.chat.formats import IGNORE_INDEX, get_format
from domainlm.engine.adapters import AdapterPool
from domainlm.engine.generation import Request, Sampling
from domainlm.engine.local import LocalEngine
from domainlm.engine.setup import device_dtype
from domainlm.expert import read_card
from domainlm.models import build_tiny_model
from domainlm.models.base import load_base
from domainlm.train.batching import file_hash
from domainlm.train.export import merge_expert
from domainlm.train.recipe import load_recipe
from domainlm.train.samples import generate
from domainlm.train.setup import lr_factor
from domainlm.train.trainer import train
from tests.train_helpers import ALL_AND_HEAD, QA, losses, write_qa, write_recipe


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_six_step_run_writes_a_complete_expert(
    tmp_path: Path, cli: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = write_qa(tmp_path / "dev.jsonl", QA[:3])
    written = write_recipe(
        tmp_path, eval={"dev": str(dev), "eval_steps": 2, "samples": 2}, description="law Q&A"
    )
    # The recipe in its own folder, its paths relative to it (recipes/../train.jsonl).
    recipe = tmp_path / "recipes" / "law.yaml"
    recipe.parent.mkdir()
    text = yaml.safe_load(written.read_text(encoding="utf-8"))
    text["datasets"] = [{"path": "../train.jsonl"}]
    text["eval"]["dev"] = "../dev.jsonl"
    text["output_dir"] = "../experts"
    recipe.write_text(yaml.safe_dump(text, allow_unicode=True), encoding="utf-8")
    expert = tmp_path / "experts" / "law"
    seen_during_samples = []

    def watched(*args: Any) -> Any:
        seen_during_samples.append(expert.exists())
        return generate(*args)

    monkeypatch.setattr("domainlm.train.samples.generate", watched)
    code, out, err = cli("train", recipe)
    assert code == 0, err
    assert out.strip() == str(expert)
    # The expert appears whole at the end, never while its samples are being written;
    # both prompts, before and after, are answered in one batch.
    assert seen_during_samples == [False]
    assert not (tmp_path / "experts" / "law.partial").exists()
    assert {p.name for p in expert.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "expert.yaml",
        "metrics.jsonl",
        "loss.png",
        "checkpoints",
    }

    config = json.loads((expert / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16

    rows = [json.loads(line) for line in (expert / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert {"step", "epoch", "loss", "grad_norm", "lr", "tokens", "tokens_per_s"} <= set(row)
        assert row["loss"] > 0 and row["tokens_per_s"] > 0 and row["grad_norm"] > 0
    assert [row["step"] for row in rows if "eval_loss" in row] == [2, 4, 6]
    spec = load_recipe(recipe).optim
    assert [row["lr"] for row in rows] == pytest.approx(
        [1e-3 * lr_factor(step, spec, 6) for step in range(6)]
    )
    # 8 examples in batches of 2 rows: an epoch is at most 4 micro-batches.
    assert rows[-1]["epoch"] >= 1.5

    card = read_card(expert)
    assert card.name == "law" and card.description == "law Q&A" and card.stage == "sft"
    assert card.base.model == "tiny" and card.base.chat_format == "chatglm3"
    assert card.base.content_hash.startswith("sha256:")
    assert card.datasets[0].content_hash == file_hash(tmp_path / "train.jsonl")
    # Paths in the card: absolute and normalised.
    assert card.datasets[0].path == str(tmp_path / "train.jsonl")
    assert card.recipe["eval"]["dev"] == str(dev)
    assert card.recipe["output_dir"] == str(tmp_path / "experts")
    assert [(r.expert, r.first_step, r.last_step, r.lr) for r in card.runs] == [("law", 1, 6, 1e-3)]
    assert card.runs[0].train_loss == rows[-1]["loss"]
    assert card.runs[0].eval_loss == rows[-1]["eval_loss"]
    assert card.datasets[0].examples == len(QA)
    assert card.metrics["steps"] == 6
    best = min(row["eval_loss"] for row in rows if "eval_loss" in row)
    assert card.metrics["best_eval_loss"] == pytest.approx(best)
    assert card.recipe["optim"]["max_steps"] == 6
    assert len(card.samples) == 2 and card.samples[0]["prompt"] == QA[0][0]

    png = (expert / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

    checkpoints = sorted(p.name for p in (expert / "checkpoints").iterdir())
    assert "step-0000006" in checkpoints and not any(n.startswith(".tmp") for n in checkpoints)
    assert f"step-{card.metrics['adapter_step']:07d}" in checkpoints

    # peft loads the adapter unchanged, and it changed the model.
    from peft import PeftModel

    base = build_tiny_model(tokenizer)
    ids = get_format("chatglm3", tokenizer).render_prompt(
        Conversation.model_validate({"messages": [{"role": "user", "content": QA[0][0]}]})
    )
    before = _logits(base, ids)
    adapted = PeftModel.from_pretrained(base, str(expert))
    after = _logits(adapted, ids)
    assert not torch.allclose(before, after, atol=1e-5)

    # The merged export computes the same function.
    code, _, err = cli("export", expert, "--merge", tmp_path / "merged")
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(merged, ids), after, atol=1e-4)
    code, _, err = cli("export", expert, "--merge", tmp_path / "merged")
    assert code == 2 and "already exists" in err


def test_memorises_eight_answers_and_trains_only_the_answers(
    tmp_path: Path, tokenizer: Any
) -> None:
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ALL_AND_HEAD},
            optim={"max_steps": 40, "batch_size": 8, "lr": 1e-2, "schedule": "constant"},
            save_steps=40,
        )
    )
    expert = train(recipe)
    assert losses(expert)[-1] < 0.1

    from peft import PeftModel

    model = PeftModel.from_pretrained(build_tiny_model(tokenizer), str(expert)).eval()
    chat = get_format("chatglm3", tokenizer)
    question, answer = QA[4]
    conversation = Conversation.model_validate(
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    )
    rendered = chat.render(conversation)
    logits = _logits(model, rendered.input_ids)[:-1]
    targets = torch.tensor(rendered.input_ids[1:])
    per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    trained = torch.tensor(rendered.labels[1:]) != IGNORE_INDEX
    # The answer is learned; the user's question (never a target) is not.
    assert per_token[trained].mean() < 0.1
    prompt_part = per_token[~trained][3:]  # after [gMASK]sop<|user|>
    assert prompt_part.mean() > 2.0
    prompt = chat.render_prompt(Conversation(messages=conversation.messages[:1]))
    pool = AdapterPool(load_base("tiny"))
    pool.add(expert)
    (reply,) = LocalEngine(pool).run([Request(prompt, "law", stop=chat.stop_strings)])
    assert reply.text.strip() == answer


def test_samples_are_the_saved_adapters_answers_as_the_engine_gives_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = write_qa(tmp_path / "dev.jsonl", QA[:2])
    path = write_recipe(
        tmp_path,
        lora={"target_modules": ALL_AND_HEAD},
        optim={"max_steps": 4, "batch_size": 8, "lr": 1e-2, "schedule": "constant"},
        eval={"dev": str(dev), "eval_steps": 2, "samples": 2},
        save_steps=4,
    )
    eval_losses = iter([1.0, 2.0])  # step 2 is the best: its adapter becomes the expert
    monkeypatch.setattr("domainlm.train.trainer.evaluate", lambda run: next(eval_losses))
    batches: list[int] = []
    engine_run = LocalEngine.run

    def counted(self: LocalEngine, requests: list[Request]) -> Any:
        batches.append(len(requests))
        return engine_run(self, requests)

    monkeypatch.setattr(LocalEngine, "run", counted)
    expert = train(load_recipe(path))
    assert batches == [4]  # two prompts, before and after, submitted together
    card = read_card(expert)
    assert card.metrics["adapter_step"] == 2 and card.metrics["steps"] == 4

    # The samples are what the engine answers with the expert as saved (`ask` runs the
    # base in the same dtype as training: bf16 where the CPU has it).
    pool = AdapterPool(load_base("tiny", dtype=device_dtype()[1]))
    pool.add(expert)
    chat = get_format("chatglm3", pool.base.tokenizer)
    prompts = [
        chat.render_prompt(
            Conversation.model_validate({"messages": [{"role": "user", "content": q}]})
        )
        for q, _ in QA[:2]
    ]
    requests = [
        Request(p, who, Sampling(max_new_tokens=96), chat.stop_strings)
        for who in ("base", "law")
        for p in prompts
    ]
    answers = [c.text.strip() for c in engine_run(LocalEngine(pool), requests)]
    assert [s["base"] for s in card.samples] + [s["expert"] for s in card.samples] == answers
    # ... and not what the last step's adapter answers.
    last = tmp_path / "last"
    shutil.copytree(expert, last, ignore=shutil.ignore_patterns("checkpoints"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(expert / "checkpoints" / "step-0000004" / name, last / name)
    pool.add(last, name="last")
    requests = [Request(p, "last", Sampling(max_new_tokens=96), chat.stop_strings) for p in prompts]
    assert [c.text.strip() for c in engine_run(LocalEngine(pool), requests)] != answers[2:]


def test_continued_pretraining_with_replay(tmp_path: Path) -> None:
    statutes = tmp_path / "statutes.txt"
    statutes.write_text(
        "第五百八十六条 当事人可以约定一方向对方给付定金作为债权的担保。\n\n"
        "第五百八十七条 债务人履行债务的，定金应当抵作价款或者收回。\n\n"
        "第一千零四十七条 结婚年龄，男不得早于二十二周岁，女不得早于二十周岁。\n",
        encoding="utf-8",
    )
    general = tmp_path / "general.jsonl"
    general.write_text(
        "".join(
            json.dumps({"content": f"第{i}段通用文本。天气很好。"}, ensure_ascii=False) + "\n"
            for i in range(5)
        ),
        encoding="utf-8",
    )
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            stage="pt",
            datasets=[
                {"path": str(statutes), "weight": 0.8},
                {"path": str(general), "weight": 0.2, "text_field": "content"},
            ],
            optim={"max_steps": 3},
            base={"chat_format": "auto"},
        )
    )
    expert = train(recipe)
    card = read_card(expert)
    assert card.stage == "pt" and [d.examples for d in card.datasets] == [3, 5]
    # `auto` is resolved before training and the card records the format used: the tiny
    # tokenizer has ChatGLM3's tokens and a template of its own, which it follows.
    assert recipe.base.chat_format == "auto" and card.base.chat_format == "hf"
    assert len(losses(expert)) == 3


def _cli_error(cli: Any, *args: Any) -> str:
    code, _, err = cli(*args)
    assert code == 2, err
    assert "Traceback" not in err
    return str(err)


def test_user_mistakes_get_one_line_errors(tmp_path: Path, cli: Any) -> None:
    recipe = write_recipe(tmp_path)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")
    assert "is a folder; pass a recipe YAML file" in _cli_error(cli, "train", tmp_path)
    assert f"output_dir: {a_file} is a file, not a folder" in _cli_error(
        cli, "train", recipe, f"output_dir={a_file}"
    )
    assert f"{a_file} is a file, not a folder" in _cli_error(
        cli, "train", recipe, f"output_dir={a_file}/experts"
    )
    assert "is a folder, expected a data file" in _cli_error(
        cli, "train", recipe, f"datasets=[{{path: {tmp_path}}}]"
    )
    assert "eval.dev" in _cli_error(cli, "train", recipe, f"eval.dev={tmp_path}")
    assert "not an expert" in _cli_error(cli, "train", recipe, "--from", tmp_path)
    csv = tmp_path / "qa.csv"
    csv.write_text("q,a\n问,答\n", encoding="utf-8")
    assert "convert it first" in _cli_error(cli, "train", recipe, f"datasets=[{{path: {csv}}}]")
    assert "no such file" in _cli_error(cli, "train", recipe, "datasets=[{path: nope.jsonl}]")
    assert "not found" in _cli_error(cli, "train", recipe, "base.path=/no/such/model")
    assert "optim.lr" in _cli_error(cli, "train", recipe, "optim.lr=-1")
    assert "lora.target_modules" in _cli_error(cli, "train", recipe, "lora.target_modules=[nope]")
    assert "must not end in .partial" in _cli_error(cli, "train", recipe, "name=law.partial")
    assert cli("train", recipe, "-q")[0] == 0
    assert "already holds" in _cli_error(cli, "train", recipe)
    assert "not an expert" in _cli_error(cli, "export", tmp_path, "--merge", tmp_path / "m")
    expert = tmp_path / "experts" / "law"
    assert f"cannot create {a_file}/m" in _cli_error(cli, "export", expert, "--merge", a_file / "m")


def test_export_keeps_the_bf16_base_dtype_and_the_usual_modes(
    tmp_path: Path, tokenizer: Any
) -> None:
    base = tmp_path / "base-bf16"
    build_tiny_model(tokenizer).to(torch.bfloat16).save_pretrained(base)
    tokenizer.save_pretrained(base)
    path = write_recipe(
        tmp_path, base={"path": str(base), "dtype": "bf16"}, optim={"max_steps": 2}, save_steps=2
    )
    expert = train(load_recipe(path))
    merged = merge_expert(expert, tmp_path / "out" / "merged")
    from safetensors import safe_open

    with safe_open(str(merged / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(k).get_dtype() for k in weights.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(merged.stat().st_mode) == 0o777 & ~mask
    for file in merged.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~mask, file.name
    assert not [p for p in merged.parent.iterdir() if p.name.startswith(".")]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = get_format("chatglm3", tokenizer).render_prompt(
        Conversation.model_validate({"messages": [{"role": "user", "content": QA[0][0]}]})
    )
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(expert)
    )
    exported = AutoModelForCausalLM.from_pretrained(merged)
    assert next(exported.parameters()).dtype == torch.bfloat16
    assert torch.allclose(_logits(exported, ids), _logits(reference, ids), atol=0.05)


def test_manifest_trains_each_expert_once(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # output_dir is relative to where the command runs
    write_qa(tmp_path / "consult.jsonl", QA[:4])
    write_qa(tmp_path / "compute.jsonl", QA[4:])
    manifest = tmp_path / "experts.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "base": {"path": "tiny", "chat_format": "chatglm3"},
                    "optim": {"max_steps": 2, "batch_size": 2, "max_seq_len": 128},
                    "output_dir": "experts",
                },
                "experts": [
                    {"name": "consulting", "datasets": [{"path": "consult.jsonl"}]},
                    {
                        "name": "computing",
                        "datasets": [{"path": "compute.jsonl"}],
                        "optim": {"lr": 5e-4},
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    code, out, err = cli("train", manifest, "-q")
    assert code == 0, err
    folders = [tmp_path / "experts" / name for name in ("consulting", "computing")]
    assert [Path(line).resolve() for line in out.split()] == folders
    cards = [read_card(f) for f in folders]
    assert cards[0].datasets[0].content_hash != cards[1].datasets[0].content_hash
    assert cards[1].recipe["optim"]["lr"] == 5e-4 and cards[1].recipe["optim"]["max_steps"] == 2
    stamp = (folders[0] / "adapter_model.safetensors").stat().st_mtime_ns
    code, out, err = cli("train", manifest)
    assert code == 0 and err.count("already trained") == 2
    assert (folders[0] / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_a_recipes_eval_suite_runs_on_base_and_expert_at_the_end(tmp_path: Path, cli: Any) -> None:
    """`eval.suite` in a recipe: the suite runs on the base and the new expert when training
    ends; the report is in the expert folder and the comparison in its card."""
    root = Path(__file__).resolve().parents[1]
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: check\ntasks:\n"
        f"  - {{name: exam, type: exam, data: {root}/examples/eval/finance_val/*.csv,"
        " scorers: [loglik]}\n"
        f"  - {{name: calls, type: toolcall, data: {root}/examples/eval/tool_calls.jsonl,"
        " limit: 2, max_new_tokens: 8}\n"
    )
    recipe = write_recipe(tmp_path, eval={"samples": 0, "suite": "suite.yaml"})
    code, _, err = cli("train", recipe, "optim.max_steps=2")
    assert code == 0, err
    expert = tmp_path / "experts" / "law"
    assert (expert / "eval" / "report.html").is_file()
    rows = (expert / "eval" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 2 * (9 + 2)  # base and expert: 9 questions (2 multi-answer), 2 calls
    evaluation = read_card(expert).evaluation
    assert evaluation["suite"] == "check" and evaluation["report"] == "eval/report.html"
    exam = next(p for p in evaluation["parts"] if p["task"] == "exam")
    assert exam["delta"] == pytest.approx(exam["expert"] - exam["base"])
    assert len(exam["interval"]) == 2
