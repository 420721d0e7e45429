"""Interruptions: SIGKILL then --resume gives the uninterrupted loss curve; Ctrl-C saves;
Ctrl-C or SIGTERM during the end step leaves no expert and --resume finishes it; two
processes (DDP over gloo) share the data and make one expert."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from domainlm.expert import Expert, read_card
from domainlm.train.recipe import load_recipe
from domainlm.train.trainer import train
from tests.train_helpers import QA, losses, write_qa, write_recipe

ROOT = Path(__file__).resolve().parents[1]

KILLED_RUN = """
import os, signal, sys
from domainlm.train.recipe import load_recipe
from domainlm.train.trainer import train

def kill(step, row):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

train(load_recipe(sys.argv[1]), on_step=kill)
"""


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=240, **kwargs
    )


def test_resume_after_sigkill_gives_the_same_loss_curve(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, optim={"max_steps": 7, "batch_size": 1}, save_steps=2)
    straight = train(load_recipe(path, [f"output_dir={tmp_path / 'straight'}"]))

    overrides = tmp_path / "killed.yaml"
    overrides.write_text(
        path.read_text().replace(str(tmp_path / "experts"), str(tmp_path / "killed"))
    )
    result = _run("-c", KILLED_RUN, str(overrides), "5")
    assert result.returncode == -signal.SIGKILL, result.stderr
    folder = tmp_path / "killed" / "law"
    work = tmp_path / "killed" / "law.partial"
    assert len(losses(work)) == 5  # the 5th step's row was written before the kill
    assert not folder.exists()  # no expert until it is complete

    resumed = train(load_recipe(overrides), resume=True)
    assert resumed == folder and not work.exists()
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-6)
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_refuses_a_changed_recipe(tmp_path: Path, cli: object) -> None:
    path = write_recipe(tmp_path, optim={"max_steps": 4}, save_steps=2)
    result = _run("-c", KILLED_RUN, str(path), "3")
    assert result.returncode == -signal.SIGKILL
    code, _, err = cli("train", path, "optim.batch_size=1", "--resume")  # type: ignore[operator]
    assert code == 2 and "recipe changed since this run started (optim.batch_size)" in err
    code, _, err = cli("train", path)  # type: ignore[operator]
    assert code == 2 and "--resume" in err


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, optim={"max_steps": 100000}, save_steps=100000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "domainlm.cli.main", "train", str(path), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    metrics = tmp_path / "experts" / "law.partial" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    steps = len(metrics.read_text().splitlines())
    assert (tmp_path / "experts" / "law.partial" / "checkpoints" / f"step-{steps:07d}").is_dir()
    assert not (tmp_path / "experts" / "law").exists()


SIGNAL_IN_SAMPLES = """
import os, signal, sys
from domainlm.cli.main import main
from domainlm.train import samples

answer, sent = samples.generate, []

def generate(*args, **kwargs):
    if not sent:  # one signal, while the first before/after answer is written
        sent.append(os.kill(os.getpid(), getattr(signal, sys.argv[2])))
    return answer(*args, **kwargs)

samples.generate = generate
sys.exit(main(["train", sys.argv[1], *sys.argv[3:]]))
"""


def test_interrupted_end_step_leaves_no_expert_and_resume_finishes_it(
    tmp_path: Path, cli: Any
) -> None:
    dev = write_qa(tmp_path / "dev.jsonl", QA[:3])
    path = write_recipe(
        tmp_path, eval={"dev": str(dev), "samples": 2}, optim={"max_steps": 2}, save_steps=2
    )
    experts = tmp_path / "experts"
    expert, work = experts / "law", experts / "law.partial"

    result = _run("-c", SIGNAL_IN_SAMPLES, str(path), "SIGINT")
    assert result.returncode == 130, result.stderr[-3000:]
    assert "interrupted at the end of training (step 2" in result.stderr
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    assert not expert.exists()  # no half-written expert
    assert (work / "checkpoints" / "step-0000002").is_dir()
    trained = losses(work)

    code, _, err = cli("ask", "定金？", "--model", "tiny", "--experts", experts, "--expert", "law")
    assert code == 2 and "Traceback" not in err
    reason = f"{work}: not an expert: the working folder of an unfinished training run of 'law'"
    assert f"warning: {reason}" in err and f"error: no expert 'law': {reason}" in err
    assert "domainlm train RECIPE --resume" in err

    # SIGTERM while --resume writes the samples: still no expert, and no step trained.
    result = _run("-c", SIGNAL_IN_SAMPLES, str(path), "SIGTERM", "--resume")
    assert result.returncode == 130, result.stderr[-3000:]
    assert "training done (step-0000002): finishing the expert" in result.stderr
    assert "interrupted at the end of training" in result.stderr
    assert not expert.exists() and losses(work) == trained

    steps: list[int] = []
    finished = train(load_recipe(path), resume=True, on_step=lambda step, _: steps.append(step))
    assert finished == expert and not work.exists()
    assert steps == []  # the end step only: no training again
    assert losses(expert) == trained
    card = read_card(expert)
    assert card.metrics["steps"] == 2 and [s["prompt"] for s in card.samples] == [
        q for q, _ in QA[:2]
    ]
    for name in ("adapter_config.json", "adapter_model.safetensors", "loss.png"):
        assert (expert / name).is_file(), name


def test_resume_finishes_an_expert_an_earlier_version_left_without_its_card(
    tmp_path: Path, cli: Any
) -> None:
    path = write_recipe(tmp_path, optim={"max_steps": 2}, save_steps=2)
    expert = train(load_recipe(path))
    (expert / "expert.yaml").unlink()  # what Ctrl-C during the samples used to leave
    experts = expert.parent

    code, _, err = cli("ask", "定金？", "--model", "tiny", "--experts", experts, "--expert", "law")
    reason = (
        f"{expert}: not an expert: training did not finish (adapter files but no expert.yaml; "
        "to finish it: `domainlm train RECIPE --resume`)"
    )
    assert code == 2 and f"warning: {reason}" in err and f"no expert 'law': {reason}" in err
    code, _, err = cli("train", path)
    assert code == 2 and f"{expert}: holds an unfinished run: pass --resume" in err

    code, out, err = cli("train", path, "--resume")
    assert code == 0, err
    assert f"moved the unfinished run in {expert}" in err and "training done" in err
    assert out.strip() == str(expert) and not (experts / "law.partial").exists()
    assert read_card(expert).metrics["steps"] == 2 and len(losses(expert)) == 2


DDP_RUN = """
import hashlib, json, os, sys
from domainlm.train import loss
from domainlm.train.recipe import load_recipe
from domainlm.train.trainer import train

original = loss.LossModel.forward
seen = []

def forward(self, input_ids, *args, **kwargs):
    if self.training:
        seen.append(hashlib.sha1(input_ids.numpy().tobytes()).hexdigest())
    return original(self, input_ids, *args, **kwargs)

loss.LossModel.forward = forward
train(load_recipe(sys.argv[1]))
with open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.json"), "w") as handle:
    json.dump(seen, handle)
"""


def _free_port() -> int:
    # A fixed port collides with another test run on the same machine.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_processes_share_the_data_and_write_one_expert(tmp_path: Path) -> None:
    path = write_recipe(
        tmp_path, lora={"dropout": 0.0}, optim={"max_steps": 3, "batch_size": 1}, save_steps=3
    )
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_RUN))
    result = _run(
        "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        str(script), str(path), str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 3
    assert not set(seen[0]) & set(seen[1])  # different data on each process
    expert = tmp_path / "experts" / "law"
    assert (expert / "adapter_model.safetensors").is_file() and (expert / "expert.yaml").is_file()
    assert len(losses(expert)) == 3

    # Two processes x 1 micro-batch make the same steps as one process x 2 micro-batches.
    single = train(load_recipe(path, ["optim.grad_accum=2", f"output_dir={tmp_path / 'one'}"]))
    assert losses(expert) == pytest.approx(losses(single), rel=1e-4)


def test_resume_with_more_steps_trains_a_finished_expert_further(tmp_path: Path, cli: Any) -> None:
    dev = write_qa(tmp_path / "dev.jsonl", QA[:3])
    path = write_recipe(
        tmp_path,
        optim={"max_steps": 4},
        eval={"dev": str(dev), "eval_steps": 2, "samples": 0},
        save_steps=2,
    )
    expert = train(load_recipe(path))
    first = read_card(expert)
    first_rows = losses(expert)

    # The same recipe: nothing to do. A change without more steps, or to what the adapter
    # is: refused, saying what may change.
    code, _, err = cli("train", path, "--resume")
    assert code == 0 and "already trained" in err
    code, _, err = cli("train", path, "optim.lr=5e-4", "--resume")
    assert code == 2 and "already trained for 4 steps" in err and "larger optim.max_steps" in err
    code, _, err = cli("train", path, "optim.max_steps=8", "lora.r=4", "--resume")
    assert code == 2 and "(lora.r)" in err and "--from" in err and "optim.lr" in err
    code, _, err = cli("train", path, "optim.max_steps=8")
    assert code == 2 and "already holds a trained expert" in err and "--resume" in err
    assert read_card(expert) == first and not (tmp_path / "experts" / "law.partial").exists()

    # More steps with a new lr and schedule: steps 5-8 continue from step 4, while the
    # old expert stays in place and usable; interrupted at step 6, --resume finishes.
    more = ["optim.max_steps=8", "optim.lr=5e-4", "optim.schedule=constant"]
    during: list[tuple[int, float, int]] = []

    def watch(step: int, row: dict[str, Any]) -> None:
        during.append((step, row["lr"], Expert.open(expert).card.metrics["steps"]))  # type: ignore[arg-type]
        if step == 6 and len(during) == 2:
            raise KeyboardInterrupt  # a second Ctrl-C: the step-6 checkpoint is saved

    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(path, more), resume=True, on_step=watch)
    assert read_card(expert) == first
    train(load_recipe(path, more), resume=True, on_step=watch)
    assert during == [(5, 5e-4, 4), (6, 5e-4, 4), (7, 5e-4, 4), (8, 5e-4, 4)]
    assert not (tmp_path / "experts" / "law.partial").exists()

    card = read_card(expert)
    assert card.metrics["steps"] == 8 and card.recipe["optim"]["lr"] == 5e-4
    runs = [(r.first_step, r.last_step, r.lr, r.schedule, r.max_steps) for r in card.runs]
    assert runs == [(1, 4, 1e-3, "cosine", 4), (5, 8, 5e-4, "constant", 8)]
    assert card.runs[0].eval_loss == first.metrics["eval_loss"]
    assert card.runs[0].datasets == card.runs[1].datasets == first.datasets
    assert losses(expert)[:4] == first_rows and len(losses(expert)) == 8
    assert (expert / "checkpoints" / "step-0000008").is_dir()


def test_from_starts_a_new_expert_from_another_ones_adapter(tmp_path: Path, cli: Any) -> None:
    path = write_recipe(tmp_path, optim={"max_steps": 2}, save_steps=2)
    source = train(load_recipe(path))
    more = write_qa(tmp_path / "more.jsonl", QA[4:])
    data = f"datasets=[{{path: {more}}}]"
    code, _, err = cli("train", path, "name=law2", data, "lora.r=4", "--from", source)
    assert code == 2 and "another shape (lora.r 8 there, 4 here)" in err

    # New data, an lr so small that the adapter cannot move: it is the source's.
    code, out, err = cli("train", path, "name=law2", data, "optim.lr=1e-12", "--from", source)
    assert code == 0, err
    new = Path(out.strip())
    a = load_file(source / "adapter_model.safetensors")
    b = load_file(new / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    card = read_card(new)
    assert [(r.expert, r.first_step, r.last_step) for r in card.runs] == [
        ("law", 1, 2),
        ("law2", 1, 2),
    ]
    assert card.runs[1].started_from == f"law ({source})"
    assert card.runs[0].datasets[0].content_hash != card.runs[1].datasets[0].content_hash
    assert card.recipe["from_expert"] == str(source)
