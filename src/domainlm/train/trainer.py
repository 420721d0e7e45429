"""The training loop: `domainlm train RECIPE.yaml` runs `train(load_recipe(...))`.

Top to bottom: pick precision and threads, load the base and attach LoRA, tokenize the
datasets into a deterministic batch plan, then step: accumulate micro-batches (loss summed
per token, scaled once per step by `loss.step_scale`), clip, step the optimizer, log a
metrics row, evaluate and checkpoint when due. The run works in `NAME.partial/` (metrics,
checkpoints); its end step answers a few dev prompts before/after, adds the adapter (the best
by eval loss when there is a dev set), card and loss plot, and renames the folder to
`NAME/`, so an expert appears whole or not at all. Ctrl-C / SIGTERM stops a step or the end
step after saving; `--resume` continues from there, without training again when only the
end step was left. `--resume` with more steps trains a finished expert further (what may
change: `runs.CONTINUABLE`); the old expert stays in place until the continued one
replaces it. `--from EXPERT` starts a new expert from another one's adapter.

Runs unchanged under `accelerate launch` / `torchrun` (DDP, FSDP, DeepSpeed): accelerate
wraps the loss model, every process builds the same plan and takes its share of each
step's micro-batches, and only the main process writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from domainlm.chat.formats import ChatFormat
from domainlm.errors import DomainLMError
from domainlm.expert import (
    ADAPTER_FILES,
    CARD_FILE,
    METRICS_FILE,
    PLOT_FILE,
    partial_folder,
    read_metrics,
    write_card,
)
from domainlm.train import checkpoint as ckpt
from domainlm.train.batching import Batch, BatchPlan, eval_batches
from domainlm.train.folders import check_new, check_output_dir, continue_finished, make_folder
from domainlm.train.loss import LossModel, step_scale
from domainlm.train.metrics import plot_loss, truncate_metrics
from domainlm.train.progress import TrainProgress
from domainlm.train.recipe import Recipe
from domainlm.train.runs import (
    SCHEDULE,
    check_continuation,
    data_changes,
    data_refs,
    expert_card,
    run_record,
)
from domainlm.train.runs import recipe_changes as changes_between
from domainlm.train.samples import before_after, expert_pool, suite_report
from domainlm.train.setup import (
    attach_lora,
    attention_for,
    choose_precision,
    count_steps,
    load_datasets,
    load_dev,
    load_model,
    make_format,
    make_optimizer,
    make_scheduler,
    set_attention,
    set_threads,
    start_from_expert,
    tune_allocator,
)
from domainlm.train.stopping import StopFlag, stop_requests

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
    run_start: int = 0  # the step this run (or continuation with its own schedule) began at


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
    scheduler: Any = None
    state: RunState = field(default_factory=RunState)
    loss_model: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Earlier runs (card `runs` entries): continuations' predecessors, a `--from` source's."""
    origin: str | None = None
    """The expert whose adapter this expert's first run started from (`--from`)."""
    inference_attention: str | None = None
    """The base's own attention kernel, which the engine (and so the samples) use."""

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
    check_output_dir(recipe.output_dir)
    adopt, copied = False, False
    if (expert / CARD_FILE).is_file():
        had_work = partial_folder(expert).exists()
        if not continue_finished(recipe, expert, resume, console):
            return expert
        copied = not had_work
    else:
        adopt = check_new(expert, resume)
    try:
        run = _prepare(recipe, expert, resume, adopt, console)
    except DomainLMError:
        if copied:  # a continuation refused before its first step leaves nothing behind
            shutil.rmtree(partial_folder(expert), ignore_errors=True)
        raise
    with stop_requests(run.accelerator.device) as stop:
        _loop(run, stop, console, on_step)
        _finish(run, stop, console)
    return expert


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
    attention = set_attention(
        base.model, attention_for(recipe.base.attention, device, recipe.optim.max_seq_len)
    )
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
    dev = eval_batches(dev_examples, optim.batch_size, optim.max_seq_len, plan.pad_id)
    run = Run(
        recipe, expert, partial_folder(expert), accelerator, base, chat_format, model, plan,
        batches_per_epoch, dev, dev_conversations, total, make_optimizer(model, optim),
    )  # fmt: skip
    run.inference_attention = attention
    saved = _restore(run, adopt, console) if resume else None
    if saved is None:
        if recipe.from_expert is not None:
            run.history, run.origin = start_from_expert(model, recipe.from_expert, base)
            console.print(f"starting from the adapter of {run.origin}")
        if run.main:
            make_folder(run.work)
            (run.work / METRICS_FILE).write_text("", encoding="utf-8")
    # A run's schedule spans its own steps: a continuation with a new one starts it anew.
    run.scheduler = make_scheduler(run.optimizer, optim, total - run.state.run_start)
    if saved is not None:
        _load_optimizer(run, saved)
    run.loss_model, run.optimizer = accelerator.prepare(LossModel(model), run.optimizer)
    return run


def _restore(run: Run, adopt: bool, console: Console) -> dict[str, Any] | None:
    """Adapter, counters, RNG and earlier runs from the latest checkpoint (None: there is
    none yet). A checkpoint made with another lr or schedule (or fewer steps) ends its run
    there: the steps after it are a continuation with a schedule of its own."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if adopt and run.main:
        os.replace(run.expert, run.work)
        console.print(f"moved the unfinished run in {run.expert} to {run.work}")
    run.accelerator.wait_for_everyone()
    latest = ckpt.latest_checkpoint(run.checkpoints)
    if latest is None:
        console.print("no checkpoint yet: starting from step 0")
        return None
    saved = ckpt.load_state(latest)
    now = data_refs(run.plan.datasets)
    changes = changes_between(
        saved["recipe"], run.recipe.model_dump(mode="json"), "data" not in saved
    )
    check_continuation(str(latest), changes, data_changes(saved.get("data", now), now))
    set_peft_model_state_dict(run.model, load_file(latest / "adapter_model.safetensors"))
    run.state = RunState(**saved["state"])
    run.history, run.origin = list(saved.get("runs", [])), saved.get("origin")
    ckpt.set_rng_state(saved["rng"])
    state = run.state
    if SCHEDULE & set(changes):
        if run.total_steps <= state.step:
            raise DomainLMError(
                f"{latest}: {state.step} steps are trained and the recipe asks for "
                f"{run.total_steps}: to train further, give a larger optim.max_steps or epochs"
            )
        run.history.append(run_record(run, saved["recipe"], saved.get("data", now)))
        state.run_start = state.step
        saved["scheduler"] = None  # the continuation's own schedule
        console.print(
            f"continuing from {latest.name} to step {run.total_steps} with a new schedule "
            f"({', '.join(c for c in changes if c in SCHEDULE)})"
        )
    elif state.step < run.total_steps:
        console.print(f"resuming from {latest.name} (step {state.step} of {run.total_steps})")
    else:
        console.print(f"training done ({latest.name}): finishing the expert")
    if run.main:
        truncate_metrics(run.work / METRICS_FILE, state.step)
    return saved


def _load_optimizer(run: Run, saved: dict[str, Any]) -> None:
    """Optimizer moments from the checkpoint. Resuming a run restores its schedule too; a
    continuation keeps only the moments, with this recipe's hyper-parameters."""
    state = saved["optimizer"]
    if saved["scheduler"] is None:
        state = {
            "state": state["state"],
            "param_groups": run.optimizer.state_dict()["param_groups"],
        }
    run.optimizer.load_state_dict(state)
    if saved["scheduler"] is not None:
        run.scheduler.load_state_dict(saved["scheduler"])
    for group in run.optimizer.param_groups:
        group["weight_decay"] = run.recipe.optim.weight_decay


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
            "data": data_refs(run.plan.datasets),
            "runs": run.history,
            "origin": run.origin,
        }
        ckpt.save_checkpoint(run.checkpoints, run.state.step, run.model, adapter, state)
        ckpt.prune(run.checkpoints, KEEP_CHECKPOINTS, run.state.best_step)
    run.accelerator.wait_for_everyone()


def _finish(run: Run, stop: StopFlag, console: Console) -> None:
    """The end step: the chosen adapter (the best by eval loss, else the last) into the
    work folder, before/after samples of it, then card and loss plot, and the work folder
    renamed to the expert's. Stopped by Ctrl-C like a step: the finished training stays in
    its last checkpoint and --resume comes back here."""
    state = run.state
    chosen = state.best_step if state.best_step is not None else state.step
    if run.main:
        source = ckpt.step_dir(run.checkpoints, chosen)
        for name in ADAPTER_FILES:
            shutil.copyfile(source / name, run.work / name)
    samples: list[dict[str, str]] = []
    evaluation: dict[str, Any] = {}
    wants_samples = bool(run.recipe.eval.samples and run.dev_conversations)
    if run.main and (wants_samples or run.recipe.eval.suite):
        with tempfile.TemporaryDirectory(dir=run.work) as folder:
            for name in ADAPTER_FILES:
                shutil.copyfile(run.work / name, Path(folder) / name)
            write_card(Path(folder), expert_card(run, chosen, []))
            pool = expert_pool(run, Path(folder))
            if wants_samples:
                samples = before_after(run, pool, console, stop=lambda: stop.requested)
            if run.recipe.eval.suite and not stop.requested:
                evaluation = suite_report(run, pool, console)
    if stop():  # every process takes part
        raise Interrupted(
            f"interrupted at the end of training (step {state.step}, saved in "
            f"{run.checkpoints}); run again with --resume to write the expert"
        )
    if run.main:
        metrics = read_metrics(run.work / METRICS_FILE)
        plot_loss(metrics, run.work / PLOT_FILE, f"{run.recipe.name} ({run.recipe.stage})")
        write_card(run.work, expert_card(run, chosen, samples, evaluation))
        replacing = run.expert.exists()
        try:
            ckpt.publish_folder(run.work, run.expert)
        except OSError as exc:
            raise DomainLMError(
                f"cannot rename {run.work} to {run.expert}: {exc.strerror or exc}"
            ) from None
        what = "continued expert" if replacing else "expert"
        console.print(f"{what} written to {run.expert} (adapter from step {chosen})")
    run.accelerator.wait_for_everyone()
