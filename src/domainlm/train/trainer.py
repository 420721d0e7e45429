"""The training loop: `domainlm train RECIPE.yaml` runs `train(load_recipe(...))`.

Top to bottom: pick precision and threads, load the base and attach LoRA, tokenize the
datasets into a deterministic batch plan, then step: accumulate micro-batches (loss summed
per token, scaled once per step by `loss.step_scale`), clip, step the optimizer, log a
metrics row, evaluate and checkpoint when due. The run works in `NAME.partial/` (metrics,
checkpoints); its end step answers a few dev prompts before/after, adds the adapter (the best
by eval loss when there is a dev set), card and loss plot, and renames the folder to
`NAME/`, so an expert appears whole or not at all. Ctrl-C / SIGTERM stops a step or the end
step after saving; `--resume` continues from there, without training again when only the
end step was left.

Runs unchanged under `accelerate launch` / `torchrun` (DDP, FSDP, DeepSpeed): accelerate
wraps the loss model, every process builds the same plan and takes its share of each
step's micro-batches, and only the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from domainlm import __version__
from domainlm.chat.formats import ChatFormat
from domainlm.errors import DomainLMError
from domainlm.expert import (
    ADAPTER_FILES,
    CARD_FILE,
    METRICS_FILE,
    PLOT_FILE,
    BaseRef,
    DatasetRef,
    ExpertCard,
    partial_folder,
    read_metrics,
    write_card,
)
from domainlm.train import checkpoint as ckpt
from domainlm.train.batching import Batch, BatchPlan, eval_batches
from domainlm.train.loss import LossModel, step_scale
from domainlm.train.metrics import plot_loss, truncate_metrics
from domainlm.train.progress import TrainProgress
from domainlm.train.recipe import Recipe
from domainlm.train.samples import before_after
from domainlm.train.setup import (
    attach_lora,
    choose_precision,
    count_steps,
    load_datasets,
    load_dev,
    load_model,
    make_format,
    make_optimizer,
    set_threads,
    tune_allocator,
)

#: Checkpoints kept besides the best one.
KEEP_CHECKPOINTS = 2


class Interrupted(DomainLMError):
    """Training or its end step stopped by Ctrl-C/SIGTERM after saving a checkpoint."""


@dataclass
class RunState:
    """Counters saved in every checkpoint."""

    step: int = 0
    micro_batches: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    train_seconds: float = 0.0
    best_eval_loss: float | None = None
    best_step: int | None = None
    last_loss: float | None = None
    last_eval_loss: float | None = None


@dataclass
class Run:
    """Everything one training run holds."""

    recipe: Recipe
    expert: Path  # where the finished expert appears
    work: Path  # where the run keeps its files until then (EXPERT.partial)
    accelerator: Any
    base: Any
    chat_format: ChatFormat
    model: Any
    plan: BatchPlan
    batches_per_epoch: int
    dev_batches: list[Batch]
    dev_conversations: list[Any]
    total_steps: int
    optimizer: Any
    scheduler: Any
    state: RunState = field(default_factory=RunState)
    loss_model: Any = None

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def train(
    recipe: Recipe,
    resume: bool = False,
    console: Console | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> Path:
    """Train the expert `recipe` describes and return its directory.

    Raises:
        DomainLMError: for bad recipes, data or output folders; `Interrupted` after
            Ctrl-C/SIGTERM (a checkpoint is saved first).
    """
    console = console or Console(stderr=True, quiet=True)
    expert = recipe.output_dir / recipe.name
    if resume and (expert / CARD_FILE).is_file():
        console.print(f"{recipe.name}: already trained ({expert})")
        return expert
    adopt = _check_output(expert, resume)
    run = _prepare(recipe, expert, resume, adopt, console)
    with _stop_requests(run.accelerator.device) as stop:
        _loop(run, stop, console, on_step)
        _finish(run, stop, console)
    return expert


def _check_output(expert: Path, resume: bool) -> bool:
    """Refuse to overwrite anything. True when `expert` holds an unfinished run of an
    earlier version (working files in the expert folder), which --resume moves to
    EXPERT.partial and finishes."""
    work = partial_folder(expert)
    if (expert / CARD_FILE).is_file():
        raise DomainLMError(f"{expert}: already holds a trained expert (pick another name)")
    old_run = (expert / "checkpoints").is_dir() or (expert / METRICS_FILE).is_file()
    if old_run and work.exists():
        raise DomainLMError(f"{expert} and {work} both hold an unfinished run: remove one")
    empty = expert.is_dir() and not any(expert.iterdir())
    if expert.exists() and not (old_run or empty):
        raise DomainLMError(
            f"{expert}: exists and is not an expert: remove it or pick another name"
        )
    if not resume and (old_run or ckpt.checkpoints(work / "checkpoints")):
        where = expert if old_run else work
        raise DomainLMError(f"{where}: holds an unfinished run: pass --resume to continue it")
    return old_run


def _prepare(recipe: Recipe, expert: Path, resume: bool, adopt: bool, console: Console) -> Run:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose_precision(recipe.base.dtype, device)
    accelerator = Accelerator(mixed_precision=precision.autocast, cpu=device == "cpu")
    set_threads()
    if device == "cpu":
        tune_allocator()
    set_seed(recipe.seed)
    base = load_model(recipe, precision, device)
    chat_format = make_format(recipe, base.tokenizer)
    datasets = load_datasets(recipe, base.tokenizer, chat_format)
    dev_examples, dev_conversations = load_dev(recipe, base.tokenizer, chat_format)
    optim = recipe.optim
    model = attach_lora(
        base.model,
        recipe.lora,
        optim.gradient_checkpointing,
        recipe.base.load_in_4bit,
        autocast=precision.autocast != "no",
    )
    plan = BatchPlan(
        datasets, optim.batch_size, optim.max_seq_len, optim.packing,
        base.tokenizer.pad_token_id, recipe.seed,
    )  # fmt: skip
    batches_per_epoch = len(plan.epoch(0))  # packs the whole epoch: once per run
    total = count_steps(optim, batches_per_epoch, accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, optim, total)
    dev = eval_batches(dev_examples, optim.batch_size, optim.max_seq_len, plan.pad_id)
    run = Run(
        recipe, expert, partial_folder(expert), accelerator, base, chat_format, model, plan,
        batches_per_epoch, dev, dev_conversations, total, optimizer, scheduler,
    )  # fmt: skip
    if resume:
        _restore(run, adopt, console)
    elif run.main:
        run.work.mkdir(parents=True, exist_ok=True)
        (run.work / METRICS_FILE).write_text("", encoding="utf-8")
    run.loss_model, run.optimizer = accelerator.prepare(LossModel(model), optimizer)
    return run


def _restore(run: Run, adopt: bool, console: Console) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if adopt and run.main:
        os.replace(run.expert, run.work)
        console.print(f"moved the unfinished run in {run.expert} to {run.work}")
    run.accelerator.wait_for_everyone()
    latest = ckpt.latest_checkpoint(run.checkpoints)
    if latest is None:
        console.print("no checkpoint yet: starting from step 0")
        if run.main:
            run.work.mkdir(parents=True, exist_ok=True)
            (run.work / METRICS_FILE).write_text("", encoding="utf-8")
        return
    saved = ckpt.load_state(latest)
    recipe_now = run.recipe.model_dump(mode="json")
    changed = [key for key, value in saved["recipe"].items() if recipe_now.get(key) != value]
    if changed:
        raise DomainLMError(
            f"{latest}: the recipe changed since this run started ({', '.join(changed)}); "
            "resume with the same recipe or train under a new name"
        )
    set_peft_model_state_dict(run.model, load_file(latest / "adapter_model.safetensors"))
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.state = RunState(**saved["state"])
    ckpt.set_rng_state(saved["rng"])
    if run.main:
        truncate_metrics(run.work / METRICS_FILE, run.state.step)
    if run.state.step < run.total_steps:
        console.print(f"resuming from {latest.name} (step {run.state.step} of {run.total_steps})")
    else:
        console.print(f"training done ({latest.name}): finishing the expert")


def _loop(
    run: Run,
    stop: Callable[[], bool],
    console: Console,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> None:
    recipe, state, acc = run.recipe, run.state, run.accelerator
    per_step = recipe.optim.grad_accum * acc.num_processes
    stream = run.plan.batches(start=state.micro_batches)
    run.loss_model.train()
    with TrainProgress(console, run.total_steps, state.step, enabled=run.main) as progress:
        while state.step < run.total_steps:
            started = time.perf_counter()
            lr = run.scheduler.get_last_lr()[0]
            group = [batch for _, batch in (next(stream) for _ in range(per_step))]
            loss, grad_norm = _step(run, group)
            seconds = time.perf_counter() - started
            tokens = sum(b.tokens for b in group)
            state.step += 1
            state.micro_batches += per_step
            state.tokens += tokens
            state.trained_tokens += sum(b.trained_tokens for b in group)
            state.train_seconds += seconds
            state.last_loss = loss
            row = {
                "step": state.step,
                "epoch": round(state.micro_batches / run.batches_per_epoch, 4),
                "loss": loss,
                "grad_norm": grad_norm,
                "lr": lr,
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
            }
            improved = _maybe_evaluate(run, row)
            _write_metrics(run, row)
            interrupted = stop()
            due = state.step % recipe.save_steps == 0 or state.step == run.total_steps
            if due or improved or interrupted:
                _save(run)
            progress.update(state.step, loss, row["tokens_per_s"], row.get("eval_loss"))
            if on_step is not None:
                on_step(state.step, row)
            if interrupted:
                raise Interrupted(
                    f"interrupted at step {state.step}; checkpoint saved in {run.checkpoints} "
                    "(run again with --resume to continue)"
                )


def _step(run: Run, group: list[Batch]) -> tuple[float, float]:
    """One optimiser step over `group` (all processes' micro-batches); mean loss, grad norm."""
    acc, model = run.accelerator, run.loss_model
    world, rank = acc.num_processes, acc.process_index
    scale = step_scale(sum(b.trained_tokens for b in group), world)
    mine = group[rank::world]
    loss_sum = torch.zeros((), device=acc.device)
    for i, batch in enumerate(mine):
        # Gradients are synchronised once per step, on the last micro-batch.
        sync = nullcontext() if i == len(mine) - 1 else acc.no_sync(model)
        with sync:
            summed = model(**_inputs(batch, acc.device))
            acc.backward(summed * scale)
        loss_sum += summed.detach().float()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = acc.clip_grad_norm_(params, run.recipe.optim.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    total = acc.reduce(loss_sum, reduction="sum")
    trained = sum(b.trained_tokens for b in group)
    # DeepSpeed clips inside its engine and returns no norm.
    norm = float("nan") if grad_norm is None else float(grad_norm)
    return float(total) / trained, norm


def _inputs(batch: Batch, device: Any) -> dict[str, Any]:
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "targets": batch.targets.to(device),
        "position_ids": batch.position_ids.to(device),
    }
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask.to(device)
    return inputs


def evaluate(run: Run) -> float:
    """Mean loss per trained token over the dev set (all processes share the work)."""
    acc = run.accelerator
    mine = run.dev_batches[acc.process_index :: acc.num_processes]
    sums = torch.zeros(2, device=acc.device)  # (loss sum, trained tokens)
    run.loss_model.eval()
    with torch.no_grad():
        for batch in mine:
            sums[0] += run.loss_model(**_inputs(batch, acc.device)).float()
            sums[1] += batch.trained_tokens
    run.loss_model.train()
    sums = acc.reduce(sums, reduction="sum")
    return float(sums[0] / sums[1].clamp(min=1))


def _maybe_evaluate(run: Run, row: dict[str, Any]) -> bool:
    """Evaluate when due; True when the eval loss is the best so far."""
    state = run.state
    due = state.step % run.recipe.eval.eval_steps == 0 or state.step == run.total_steps
    if not run.dev_batches or not due:
        return False
    row["eval_loss"] = eval_loss = evaluate(run)
    state.last_eval_loss = eval_loss
    if state.best_eval_loss is None or eval_loss < state.best_eval_loss:
        state.best_eval_loss, state.best_step = eval_loss, state.step
        return True
    return False


def _write_metrics(run: Run, row: dict[str, Any]) -> None:
    if run.main:
        with (run.work / METRICS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def _adapter_state(run: Run) -> dict[str, Any]:
    """The adapter's weights, gathered from every process (FSDP/ZeRO shard them)."""
    full = run.accelerator.get_state_dict(run.loss_model)
    return {key.removeprefix("model."): value for key, value in full.items()}


def _save(run: Run) -> None:
    adapter = _adapter_state(run)  # a collective: every process takes part
    if run.main:
        state = {
            "state": asdict(run.state),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "recipe": run.recipe.model_dump(mode="json"),
        }
        ckpt.save_checkpoint(run.checkpoints, run.state.step, run.model, adapter, state)
        ckpt.prune(run.checkpoints, KEEP_CHECKPOINTS, run.state.best_step)
    run.accelerator.wait_for_everyone()


def _finish(run: Run, stop: StopFlag, console: Console) -> None:
    """The end step: before/after samples, then adapter, card and loss plot into the work
    folder, which is renamed to the expert's. Stopped by Ctrl-C like a step: the finished
    training stays in its last checkpoint and --resume comes back here."""
    state = run.state
    chosen = state.best_step if state.best_step is not None else state.step
    samples = []
    if run.main and run.recipe.eval.samples:
        samples = before_after(run, console, stop=lambda: stop.requested)
    if stop():  # every process takes part
        raise Interrupted(
            f"interrupted at the end of training (step {state.step}, saved in "
            f"{run.checkpoints}); run again with --resume to write the expert"
        )
    if run.main:
        source = ckpt.step_dir(run.checkpoints, chosen)
        for name in ADAPTER_FILES:
            shutil.copyfile(source / name, run.work / name)
        metrics = read_metrics(run.work / METRICS_FILE)
        plot_loss(metrics, run.work / PLOT_FILE, f"{run.recipe.name} ({run.recipe.stage})")
        write_card(run.work, _card(run, chosen, samples))
        try:
            ckpt.publish_folder(run.work, run.expert)
        except OSError as exc:
            raise DomainLMError(
                f"cannot rename {run.work} to {run.expert}: {exc.strerror or exc}"
            ) from None
        console.print(f"expert written to {run.expert} (adapter from step {chosen})")
    run.accelerator.wait_for_everyone()


def _card(run: Run, chosen: int, samples: list[dict[str, str]]) -> ExpertCard:
    recipe, state = run.recipe, run.state
    return ExpertCard(
        name=recipe.name,
        description=recipe.description,
        base=BaseRef(
            model=recipe.base.path,
            content_hash=run.base.content_hash,
            chat_format=recipe.base.chat_format,
        ),
        stage=recipe.stage,
        system_prompt=recipe.system_prompt,
        datasets=[
            DatasetRef(
                path=str(d.path),
                content_hash=d.content_hash,
                examples=len(d.examples),
                weight=d.weight,
            )
            for d in run.plan.datasets
        ],
        metrics={
            "steps": state.step,
            "adapter_step": chosen,
            "train_loss": state.last_loss,
            "eval_loss": state.last_eval_loss,
            "best_eval_loss": state.best_eval_loss,
            "tokens": state.tokens,
            "trained_tokens": state.trained_tokens,
            "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
        },
        recipe=recipe.model_dump(mode="json"),
        samples=samples,
        domainlm_version=__version__,
    )


class StopFlag:
    """Set by the first Ctrl-C / SIGTERM. `requested` is this process's flag; calling the
    flag asks every process (a collective in a multi-process run: all must call it)."""

    def __init__(self, device: Any) -> None:
        self.requested = False
        self.device = device  # the process group's device (NCCL reduces CUDA tensors only)

    def __call__(self) -> bool:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(self.requested)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return self.requested


@contextmanager
def _stop_requests(device: Any) -> Iterator[StopFlag]:
    """Turn the first Ctrl-C / SIGTERM into a request to save and stop after this step
    (or, in the end step, before the next before/after sample).

    A second Ctrl-C interrupts at once. In a multi-process run all processes agree (the
    request is all-reduced) so they save the same step.
    """
    flag = StopFlag(device)

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
