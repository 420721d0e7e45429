"""Before/after samples: a few dev prompts answered by the base and by the new expert.

This is the check ChatGLM3's fine-tuning tutorial does by hand after training: the same
question to the model with the adapter off and on, side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.table import Table

from domainlm.chat.conversation import Conversation

if TYPE_CHECKING:
    from domainlm.train.trainer import Run

MAX_NEW_TOKENS = 96


def _prompt(conversation: Conversation) -> Conversation | None:
    """The conversation up to (not including) its last assistant message."""
    for i in range(len(conversation.messages) - 1, 0, -1):
        if conversation.messages[i].role == "assistant":
            return Conversation(messages=conversation.messages[:i], tools=conversation.tools)
    return None


def generate(model: Any, chat_format: Any, prompt: Conversation, device: Any) -> str:
    """Greedy reply of `model` to `prompt`, cut at the format's stop strings."""
    ids = torch.tensor([chat_format.render_prompt(prompt)], device=device)
    tokenizer = chat_format.tokenizer
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    text = chat_format.decode(out[0, ids.shape[1] :].tolist())
    return chat_format.cut_at_stop(text).strip()


def before_after(
    run: Run, console: Console, stop: Callable[[], bool] | None = None
) -> list[dict[str, str]]:
    """Answers of base and expert to the first `eval.samples` dev prompts, printed as a table.

    `stop` is asked before each prompt; when it says so, the rows so far are returned.
    """
    model = run.accelerator.unwrap_model(run.loss_model).model
    device = run.accelerator.device
    rows = []
    was_training = model.training
    model.eval()
    prompts = [p for p in map(_prompt, run.dev_conversations) if p is not None]
    prompts = prompts[: run.recipe.eval.samples]
    if prompts:
        console.print(f"before/after samples: {len(prompts)} dev prompts …")
    for prompt in prompts:
        if stop is not None and stop():
            break
        with run.accelerator.autocast(), model.disable_adapter():
            before = generate(model, run.chat_format, prompt, device)
        with run.accelerator.autocast():
            after = generate(model, run.chat_format, prompt, device)
        question = prompt.messages[-1].content or ""
        rows.append({"prompt": question, "base": before, "expert": after})
    model.train(was_training)
    if rows and len(rows) == len(prompts):
        table = Table(title="before / after", show_lines=True)
        for column in ("prompt", "base", "expert"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["prompt"], row["base"], row["expert"])
        console.print(table)
    return rows
