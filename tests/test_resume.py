"""Interruptions: SIGKILL then --resume gives the uninterrupted loss curve; Ctrl-C saves;
two processes (DDP over gloo) share the data and make one expert."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from domainlm.train.recipe import load_recipe
from domainlm.train.trainer import train
from tests.train_helpers import losses, write_recipe

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
    assert len(losses(folder)) == 5  # the 5th step's row was written before the kill
    assert not (folder / "expert.yaml").exists()

    resumed = train(load_recipe(overrides), resume=True)
    assert resumed == folder
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-6)
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_refuses_a_changed_recipe(tmp_path: Path, cli: object) -> None:
    path = write_recipe(tmp_path, optim={"max_steps": 4}, save_steps=2)
    result = _run("-c", KILLED_RUN, str(path), "3")
    assert result.returncode == -signal.SIGKILL
    code, _, err = cli("train", path, "optim.lr=0.5", "--resume")  # type: ignore[operator]
    assert code == 2 and "recipe changed" in err and "optim" in err
    code, _, err = cli("train", path)  # type: ignore[operator]
    assert code == 2 and "--resume" in err


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, optim={"max_steps": 100000}, save_steps=100000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "domainlm.cli.main", "train", str(path), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    metrics = tmp_path / "experts" / "law" / "metrics.jsonl"
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
    assert (tmp_path / "experts" / "law" / "checkpoints" / f"step-{steps:07d}").is_dir()


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


def test_two_processes_share_the_data_and_write_one_expert(tmp_path: Path) -> None:
    path = write_recipe(
        tmp_path, lora={"dropout": 0.0}, optim={"max_steps": 3, "batch_size": 1}, save_steps=3
    )
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_RUN))
    result = _run(
        "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29631",
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
