"""From result rows to the numbers a report shows.

Per task and scorer, per model: the items scored, errors, the main metric's mean with a
bootstrap 95% interval, every metric's mean, per-group (subject) accuracy; against the
first model (the base, normally): the paired difference with its bootstrap 95% interval
over the items both answered, and for right/wrong items the ones that flipped.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

RESAMPLES = 2000
#: Main metrics that are 0/1 per item (shown as %, with flips).
SHARES = ("correct", "honest", "recall@5")
#: The `model` of rows no model answers (retrieval).
KB_MODEL = "kb"


def main_metric(scorer: str) -> str:
    """Right/wrong for exams, computation and tool calls; ROUGE-L for text; for citations
    the share of answers whose every checked citation is current."""
    return {
        "text": "rouge-l",
        "citations": "honest",
        "judge": "score",
        "retrieval": "recall@5",
    }.get(scorer, "correct")


def summarise(
    rows: list[dict[str, Any]],
    models: list[str],
    seed: int = 0,
    tasks: list[str] | None = None,
    regression: set[str] | None = None,
) -> dict[str, Any]:
    """The summary of `rows` for `models` (the first is the reference), parts in the
    order of `tasks` (the suite's), then by scorer. In a `regression` task, a model whose
    difference to the reference is below zero with 95% confidence is marked `forgot`."""
    by_part: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["model"] in models or row["model"] == KB_MODEL:
            by_part[(row["task"], row["scorer"])].append(row)
    order = {name: i for i, name in enumerate(tasks or [])}
    parts = []
    for (task, scorer), part in sorted(
        by_part.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0])
    ):
        answered = models if part[0]["model"] != KB_MODEL else [KB_MODEL]
        summary = _part(task, scorer, part, answered, np.random.default_rng(seed))
        if task in (regression or set()):
            summary["regression"] = True
            for entry in summary["models"].values():
                interval = (entry.get("delta") or {}).get("interval")
                entry["forgot"] = bool(interval and interval[1] < 0)
        parts.append(summary)
    return {"models": models, "reference": models[0], "parts": parts}


def _part(
    task: str, scorer: str, rows: list[dict[str, Any]], models: list[str], rng: Any
) -> dict[str, Any]:
    metric = main_metric(scorer)
    scores: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    groups: dict[str, str] = {}
    errors: dict[str, int] = defaultdict(int)
    for row in rows:
        if "error" in row:
            errors[row["model"]] += 1
        else:
            scores[row["model"]][row["id"]] = row["score"]
            groups[row["id"]] = row.get("group", "")
    reference = models[0]
    out: dict[str, Any] = {"task": task, "scorer": scorer, "metric": metric, "models": {}}
    for model in models:
        mine = scores[model]
        values = np.array([s[metric] for s in mine.values()], dtype=float)
        entry: dict[str, Any] = {"n": len(mine), "errors": errors[model]}
        entry["value"] = float(values.mean()) if len(values) else None
        entry["interval"] = _interval(values, rng)
        names = sorted({k for s in mine.values() for k in s})
        entry["metrics"] = {
            k: float(np.mean([s[k] for s in mine.values() if k in s])) for k in names
        }
        by_group: dict[str, list[float]] = defaultdict(list)
        for item, s in mine.items():
            if groups.get(item):
                by_group[groups[item]].append(s[metric])
        entry["groups"] = {g: float(np.mean(v)) for g, v in sorted(by_group.items())}
        if model != reference:
            entry["delta"] = _delta(scores[reference], mine, metric, rng)
            if metric in SHARES:
                entry["flips"] = _flips(scores[reference], mine, metric)
        out["models"][model] = entry
    return out


def _interval(values: np.ndarray, rng: Any) -> list[float] | None:
    """Bootstrap 95% interval of the mean."""
    if len(values) < 2:
        return None
    means = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


Scores = dict[str, dict[str, float]]  # item id -> metric -> value


def _delta(reference: Scores, other: Scores, metric: str, rng: Any) -> dict[str, Any] | None:
    """Paired difference other - reference over the items both answered."""
    both = sorted(set(reference) & set(other))
    if not both:
        return None
    diff = np.array([other[i][metric] - reference[i][metric] for i in both], dtype=float)
    return {"value": float(diff.mean()), "interval": _interval(diff, rng), "n": len(both)}


def _flips(reference: Scores, other: Scores, metric: str) -> dict[str, list[str]]:
    both = sorted(set(reference) & set(other))
    return {
        "right_to_wrong": [i for i in both if reference[i][metric] and not other[i][metric]],
        "wrong_to_right": [i for i in both if not reference[i][metric] and other[i][metric]],
    }


def card_parts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A two-model summary as an expert card keeps it: per task and scorer its metric, the
    base's and the expert's value (`kb` for a KB's own rows) and the difference with its
    interval."""
    parts = []
    for part in summary["parts"]:
        entry = {"task": part["task"], "scorer": part["scorer"], "metric": part["metric"]}
        for model, values in part["models"].items():
            entry[model if model in ("base", "kb") else "expert"] = values["value"]
            if values.get("delta"):
                entry["delta"] = values["delta"]["value"]
                entry["interval"] = values["delta"]["interval"]
        parts.append(entry)
    return parts
