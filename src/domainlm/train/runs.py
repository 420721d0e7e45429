"""Continuing training: what a continuation may change, and the card's record of each run.

A run continues from its latest checkpoint after an interruption (`train RECIPE --resume`),
and a finished expert continues the same way when its recipe asks for more steps
(a larger `optim.max_steps` or `optim.epochs`). A continuation may change how the
adapter is optimised (`CONTINUABLE`); when it changes the learning rate or schedule the
remaining steps get a schedule of their own, starting at the checkpoint's step. What the
adapter is and what it learns from (base, stage, data, LoRA shape, batching, seed, system
prompt) stays: for those, start a new expert from this one's adapter (`train --from`).

In: the recipe a checkpoint or card was made with, and the new one. Out: the changes, a
one-line refusal when a change is not allowed, the `RunRecord`s and the card.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from domainlm import __version__
from domainlm.errors import DomainLMError
from domainlm.expert import BaseRef, DatasetRef, ExpertCard, RunRecord
from domainlm.train.recipe import MODEL_NAMES

if TYPE_CHECKING:
    from domainlm.train.trainer import Run

#: Recipe fields that start a new schedule when they change.
SCHEDULE = frozenset(
    {"optim.lr", "optim.schedule", "optim.warmup_steps", "optim.max_steps", "optim.epochs"}
)
#: Recipe fields a continuation may change (the others are what the adapter is).
CONTINUABLE = SCHEDULE | {
    "optim.weight_decay",
    "optim.max_grad_norm",
    "optim.gradient_checkpointing",
    "eval.eval_steps",
    "eval.samples",
    "lora.dropout",
    "base.attention",
    "save_steps",
    "description",
}
#: Not compared: where the expert lives (it was found there) and the adapter a first run
#: starts from.
_NOT_COMPARED = ("output_dir", "from_expert")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _normal(path: Any) -> Any:
    # Recipes saved by earlier versions hold paths as written (`recipes/../data/x`).
    return os.path.abspath(path) if isinstance(path, str) else path


def _comparable(recipe: dict[str, Any], data: bool) -> dict[str, Any]:
    flat = _flat(recipe)
    datasets = [d for d in flat.get("datasets") or [] if isinstance(d, dict)]
    if data:
        flat["datasets"] = [{**d, "path": _normal(d.get("path"))} for d in datasets]
    else:  # the files are compared by content; what is read from them still counts
        flat["datasets"] = [d.get("text_field") for d in datasets]
    flat["eval.dev"] = _normal(flat.get("eval.dev"))
    if flat.get("base.path") not in MODEL_NAMES:
        flat["base.path"] = _normal(flat.get("base.path"))
    return flat


def recipe_changes(old: dict[str, Any], new: dict[str, Any], data: bool = True) -> list[str]:
    """Dotted recipe fields whose values differ (a field one side lacks counts as null).
    `data=False` leaves the datasets out, for callers that compare them by content."""
    a, b = _comparable(old, data), _comparable(new, data)
    return sorted(
        key
        for key in a.keys() | b.keys()
        if not key.startswith(_NOT_COMPARED) and a.get(key) != b.get(key)
    )


def data_refs(datasets: list[Any]) -> list[dict[str, Any]]:
    """What a checkpoint remembers of the data: path, content hash, examples, weight."""
    return [
        DatasetRef(
            path=str(d.path), content_hash=d.content_hash, examples=len(d.examples), weight=d.weight
        ).model_dump()
        for d in datasets
    ]


def data_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """How the datasets differ, compared by content and weight (a moved file is the same)."""
    if [(d["content_hash"], d["weight"]) for d in old] == [
        (d["content_hash"], d["weight"]) for d in new
    ]:
        return []
    changed = [
        f"{n['path']} (content or weight)"
        for o, n in zip(old, new, strict=False)
        if (o["content_hash"], o["weight"]) != (n["content_hash"], n["weight"])
    ]
    if len(old) != len(new):
        changed.append(f"{len(old)} datasets then, {len(new)} now")
    return changed


def check_continuation(where: str, changes: list[str], data: list[str]) -> None:
    """Refuse changes a continuation cannot make, naming them and what to do instead.

    Raises:
        DomainLMError: one line, when `changes` or `data` hold what must stay.
    """
    fixed = [c for c in changes if c not in CONTINUABLE] + [f"datasets: {d}" for d in data]
    if fixed:
        raise DomainLMError(
            f"{where}: the recipe changed since this run started ({', '.join(fixed)}): a "
            "continuation may change only the schedule, evaluation and saving "
            f"({', '.join(sorted(CONTINUABLE))}); resume with the same recipe, or start a "
            "new expert from this one's adapter: `train RECIPE name=NEW --from EXPERT`"
        )


def record(
    recipe: dict[str, Any],
    expert: str,
    first_step: int,
    last_step: int,
    datasets: list[dict[str, Any]],
    losses: tuple[float | None, float | None],
    started_from: str | None = None,
) -> dict[str, Any]:
    """One run's entry in the card (as a plain dict: checkpoints store it)."""
    optim = recipe.get("optim", {})
    return RunRecord(
        expert=expert,
        first_step=first_step,
        last_step=last_step,
        stage=recipe.get("stage", "sft"),
        lr=optim.get("lr", 0.0),
        schedule=optim.get("schedule", "cosine"),
        warmup_steps=optim.get("warmup_steps", 0),
        max_steps=optim.get("max_steps"),
        epochs=optim.get("epochs"),
        datasets=[DatasetRef.model_validate(d) for d in datasets],
        train_loss=losses[0],
        eval_loss=losses[1],
        started_from=started_from,
    ).model_dump(mode="json")


def card_runs(card: ExpertCard) -> list[dict[str, Any]]:
    """The runs of an existing expert (one, read from the card, if it predates `runs`)."""
    if card.runs:
        return [run.model_dump(mode="json") for run in card.runs]
    steps = int(card.metrics.get("steps") or 0)
    datasets = [d.model_dump() for d in card.datasets]
    losses = (card.metrics.get("train_loss"), card.metrics.get("eval_loss"))
    return [record(card.recipe, card.name, 1, steps, datasets, losses)]


def run_record(run: Run, recipe: dict[str, Any], data: list[dict[str, Any]]) -> dict[str, Any]:
    """The card entry of the run that ends at the current step."""
    state = run.state
    return record(
        recipe, run.recipe.name, state.run_start + 1, state.step, data,
        (state.last_loss, state.last_eval_loss),
        started_from=run.origin if state.run_start == 0 else None,
    )  # fmt: skip


def expert_card(
    run: Run,
    chosen: int,
    samples: list[dict[str, str]],
    evaluation: dict[str, Any] | None = None,
) -> ExpertCard:
    """The card of the expert `run` makes, its adapter from step `chosen`."""
    recipe, state = run.recipe, run.state
    now = data_refs(run.plan.datasets)
    runs = [*run.history, run_record(run, recipe.model_dump(mode="json"), now)]
    return ExpertCard(
        name=recipe.name,
        description=recipe.description,
        base=BaseRef(
            model=recipe.base.path,
            content_hash=run.base.content_hash,
            chat_format=run.chat_format.name,
        ),
        stage=recipe.stage,
        system_prompt=recipe.system_prompt,
        datasets=[DatasetRef.model_validate(d) for d in now],
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
        evaluation=evaluation or {},
        runs=[RunRecord.model_validate(r) for r in runs],
        domainlm_version=__version__,
    )
