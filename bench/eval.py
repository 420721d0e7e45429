"""Exam scoring against lm-evaluation-harness: the same answers, item for item, faster.

    pip install -c constraints.txt lm-eval==0.4.13      (the bench's peer, not a dependency)
    python bench/eval.py --data ../shared/data/dev/fineval_dev --rounds 5
    python bench/eval.py --data ../shared/data/dev/fineval_dev --rounds 5 --one-file

Both score the same multiple-choice CSVs (C-Eval layout, one subject per file) on the same
model in fp32 by option log-likelihood, with the same prompt: each subject's first
`--shots` questions are its worked examples, the rest are scored (lm-evaluation-harness
gets a local task per subject with exactly DomainLM's C-Eval prompt: description, `A. ...`
lines, `答案：`, target delimiter " ", few-shot from a dev split with `first_n`).

  (a) `domainlm`: `domainlm eval SUITE --dtype float32` (one forward per question, batches
      of 16 rows, the shared few-shot prefix computed once per batch);
  (b) `lm-eval`: `lm_eval --model hf ... --batch_size 16` (its own batching and caches).

With `--one-file` every subject's single-answer questions make one exam file (one subject,
the first `--shots` questions its worked examples), as a firm's own exam would be: the
prefix is shared by every question, not by the 3 of a FinEval dev subject.

Each is a process of its own timed from start to exit (model loading included), peers
taking turns for `--rounds`. Reported: wall time median, min-max, per-round ratio
lm-eval/domainlm, and the agreement: for how many questions both pick the same option,
and the largest difference of an option's log-likelihood.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import machine, spread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results" / "eval.json"
BIN = Path(sys.executable).parent
LETTERS = "ABCD"


def split_subjects(source: Path, shots: int, folder: Path, one_file: bool = False) -> list[str]:
    """Each subject's CSV split into `{subject}_dev.csv` (its first `shots` single-answer
    questions) and `{subject}_val.csv` (its other single-answer questions); with `one_file`
    every subject's single-answer questions make one exam (`finance`, ids prefixed by their
    subject) whose first `shots` questions are the worked examples."""
    from domainlm.eval.exam import subject_of

    exams: dict[str, list[dict[str, str]]] = {}
    for path in sorted(source.glob("*.csv")):
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if len(r["answer"].strip()) == 1]
        subject = subject_of(path)
        if one_file:
            for row in rows:
                row["id"] = f"{subject}-{row['id']}"
        exams.setdefault("finance" if one_file else subject, []).extend(rows)
    subjects = []
    for subject, rows in exams.items():
        if len(rows) <= shots:
            continue
        for part, chosen in (("dev", rows[:shots]), ("val", rows[shots:])):
            with (folder / part / f"{subject}_{part}.csv").open("w", encoding="utf-8") as out:
                writer = csv.DictWriter(out, fieldnames=["id", "question", *LETTERS, "answer"])
                writer.writeheader()
                for row in chosen:
                    writer.writerow({k: row[k].strip() for k in writer.fieldnames})
        subjects.append(subject)
    return subjects


def lm_eval_tasks(folder: Path, subjects: list[str]) -> None:
    """A local lm-evaluation-harness task per subject with DomainLM's C-Eval prompt."""
    from domainlm.eval.exam import header

    for subject in subjects:
        config = {
            "task": f"dlm_{subject}",
            "dataset_path": "csv",
            "dataset_kwargs": {
                "data_files": {
                    "dev": str(folder / "dev" / f"{subject}_dev.csv"),
                    "val": str(folder / "val" / f"{subject}_val.csv"),
                }
            },
            "validation_split": "val",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "description": header(subject, False),
            "doc_to_text": "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案：",
            "doc_to_choice": list(LETTERS),
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        (folder / "tasks" / f"dlm_{subject}.yaml").write_text(
            json.dumps(config, ensure_ascii=False)
        )


def run_domainlm(folder: Path, model: Path, shots: int, out: Path) -> dict[str, Any]:
    suite = folder / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "bench", "tasks": [{
            "name": "exam", "type": "exam", "data": str(folder / "val" / "*.csv"),
            "dev": str(folder / "dev" / "*.csv"), "shots": shots, "scorers": ["loglik"],
        }],
    }))  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "domainlm"), "eval", str(suite), "--model", str(model), "--dtype", "float32",
         "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    answers = {}
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        answers[row["id"]] = [row["option_logprobs"][letter] for letter in LETTERS]
    return {"seconds": seconds, "answers": answers}


def run_lm_eval(
    folder: Path, model: Path, shots: int, subjects: list[str], out: Path
) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "lm_eval"), "--model", "hf",
         "--model_args", f"pretrained={model},dtype=float32",
         "--tasks", ",".join(f"dlm_{s}" for s in subjects), "--include_path", str(folder / "tasks"),
         "--num_fewshot", str(shots), "--batch_size", "16", "--device", "cpu",
         "--log_samples", "--output_path", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    answers = {}
    for path in out.rglob("samples_dlm_*.jsonl"):
        subject = path.name.removeprefix("samples_dlm_").rsplit("_", 1)[0]
        for line in path.read_text(encoding="utf-8").splitlines():
            sample = json.loads(line)
            scores = [
                float(r[0][0]) if isinstance(r[0], list) else float(r[0]) for r in sample["resps"]
            ]
            answers[f"{subject}/{sample['doc']['id']}"] = scores
    return {"seconds": seconds, "answers": answers}


def agreement(ours: dict[str, list[float]], theirs: dict[str, list[float]]) -> dict[str, Any]:
    both = sorted(set(ours) & set(theirs))
    same = sum(
        max(range(4), key=ours[i].__getitem__) == max(range(4), key=theirs[i].__getitem__)
        for i in both
    )
    gap = max(
        (abs(a - b) for i in both for a, b in zip(ours[i], theirs[i], strict=True)), default=None
    )
    return {"items": len(both), "same_choice": same, "only_ours": len(set(ours) - set(theirs)),
            "only_theirs": len(set(theirs) - set(ours)), "max_logprob_gap": gap}  # fmt: skip


def llamafactory_scores(prediction: str, reference: str) -> dict[str, float]:
    """LLaMA-Factory's `ComputeSimilarity` for one pair, as its code computes it (jieba
    words into rouge-chinese, NLTK's sentence BLEU on characters with method3)."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hypothesis, target = list(jieba.cut(prediction)), list(jieba.cut(reference))
    if not " ".join(hypothesis).split() or not " ".join(target).split():
        rouge = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        scores = Rouge().get_scores(" ".join(hypothesis), " ".join(target))[0]
        rouge = {k: 100 * v["f"] for k, v in scores.items()}
    bleu = sentence_bleu(
        [list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3
    )
    return {**rouge, "bleu-4": 100 * bleu}


def text_check(path: Path) -> dict[str, Any]:
    """Our text metrics against LLaMA-Factory's formula on reference answers paired with
    other items' answers, cut answers and the answers themselves: the largest gaps."""
    from domainlm.eval.text import text_scores

    items = json.loads(path.read_text(encoding="utf-8"))
    answers = [str(item["answer"]) for item in items]
    pairs = [(answers[i - 1], a) for i, a in enumerate(answers)]  # another item's answer
    pairs += [(a[: len(a) // 3], a) for a in answers] + [(a, a) for a in answers[:10]]
    gaps = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    for prediction, reference in pairs:
        ours, theirs = (
            text_scores(prediction, reference),
            llamafactory_scores(prediction, reference),
        )
        for name in gaps:
            gaps[name] = max(gaps[name], abs(ours[name] - theirs[name]))
    return {"pairs": len(pairs), "max_gap": gaps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of exam CSVs")
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--one-file", action="store_true", help="every subject's questions as one exam file "
        "(a firm's own exam): one few-shot prefix for all; writes eval_one_file.json"
    )  # fmt: skip
    parser.add_argument(
        "--text", type=Path, help="JSON of {question, answer} items: check the text metrics "
        "against LLaMA-Factory's formula on them"
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    from domainlm.models.base import load_base

    folder = Path(tempfile.mkdtemp(prefix="domainlm-bench-eval-"))
    try:
        for part in ("dev", "val", "tasks"):
            (folder / part).mkdir()
        subjects = split_subjects(args.data, args.shots, folder, args.one_file)
        lm_eval_tasks(folder, subjects)
        base = load_base("default", dtype=torch.float32)
        model = folder / "model"
        base.model.save_pretrained(model)
        base.tokenizer.save_pretrained(model)
        seconds: dict[str, list[float]] = {"domainlm": [], "lm-eval": []}
        checks = []
        for round_no in range(args.rounds):
            ours = run_domainlm(folder, model, args.shots, folder / "ours")
            theirs = run_lm_eval(folder, model, args.shots, subjects, folder / "theirs")
            seconds["domainlm"].append(ours["seconds"])
            seconds["lm-eval"].append(theirs["seconds"])
            checks.append(agreement(ours["answers"], theirs["answers"]))
            print(
                f"round {round_no + 1}/{args.rounds}: domainlm {ours['seconds']:.1f} s, "
                f"lm-eval {theirs['seconds']:.1f} s, same choice {checks[-1]['same_choice']}"
                f"/{checks[-1]['items']}",
                flush=True,
            )
        ratios = [t / o for o, t in zip(seconds["domainlm"], seconds["lm-eval"], strict=True)]
        report = {
            "benchmark": "exam log-likelihood scoring, SmolLM2-135M-Instruct fp32, CPU",
            "setup": {
                "data": str(args.data),
                "layout": "one exam file" if args.one_file else "one file per subject",
                "subjects": len(subjects),
                "shots": args.shots,
                "rounds": args.rounds,
                "questions": checks[-1]["items"],
            },
            "seconds": {k: spread(v) for k, v in seconds.items()},
            "runs": seconds,
            "lm_eval_over_domainlm": spread(ratios),
            "agreement": checks[-1],
            "agreement_every_round": [c["same_choice"] for c in checks],
            "machine": machine(),
        }
        if args.text:
            report["text_metrics_vs_llamafactory"] = text_check(args.text)
        results = RESULTS.with_name("eval_one_file.json") if args.one_file else RESULTS
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n")
        print(
            json.dumps(
                {k: report[k] for k in ("seconds", "lm_eval_over_domainlm", "agreement")}, indent=1
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
