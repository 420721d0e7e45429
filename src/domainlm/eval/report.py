"""The summary as `report.md` and a self-contained `report.html` (tables and SVG charts,
no network needed to open it)."""

from __future__ import annotations

import html
import io
import re
from typing import Any

from domainlm.eval.summary import SHARES

LABELS = {
    "correct": "accuracy %",
    "rouge-l": "ROUGE-L",
    "honest": "honest citations %",
    "score": "judge score (0-100)",
    "recall@5": "recall@5 %",
}
SHOWN_FLIPS = 20


def _scale(metric: str) -> float:
    return 100.0 if metric in SHARES else 1.0


def _number(value: float | None, metric: str) -> str:
    return "–" if value is None else f"{value * _scale(metric):.1f}"


def _span(interval: list[float] | None, metric: str) -> str:
    if interval is None:
        return ""
    low, high = (v * _scale(metric) for v in interval)
    return f" [{low:.1f}, {high:.1f}]"


def _signed(delta: dict[str, Any] | None, metric: str) -> str:
    if delta is None:
        return "–"
    value = delta["value"] * _scale(metric)
    return f"{value:+.1f}{_span(delta['interval'], metric)}"


def card_line(part: dict[str, Any]) -> str:
    """One part of an expert card's evaluation (`summary.card_parts`) as one line:
    `fincalc (computation) accuracy %: base 0.0 -> expert 16.7, difference +16.7 [0.0, 33.3]`."""
    metric = part["metric"]
    line = f"{part['task']} ({part['scorer']}) {LABELS.get(metric, metric)}: "
    if "kb" in part:  # the knowledge base's own numbers (retrieval): no model in them
        return line + _number(part["kb"], metric)
    base, expert = (_number(part.get(k), metric) for k in ("base", "expert"))
    line += f"base {base} -> expert {expert}"
    if "delta" in part:
        delta = {"value": part["delta"], "interval": part.get("interval")}
        line += f", difference {_signed(delta, metric)}"
    return line


def _listed(items: list[str]) -> str:
    return ", ".join(items[:SHOWN_FLIPS]) + (" …" if len(items) > SHOWN_FLIPS else "")


def _table(part: dict[str, Any]) -> list[list[str]]:
    metric = part["metric"]
    rows = [
        [
            "model",
            "items",
            LABELS.get(metric, metric) + " [95% CI]",
            "Δ vs " + next(iter(part["models"])) + " [95% CI]",
            "right→wrong",
            "wrong→right",
            "errors",
        ]
    ]
    for model, entry in part["models"].items():
        flips = entry.get("flips") or {}
        rows.append(
            [
                model,
                str(entry["n"]),
                _number(entry["value"], metric) + _span(entry["interval"], metric),
                (_signed(entry.get("delta"), metric) if "delta" in entry else "")
                + (" ⚠ forgetting" if entry.get("forgot") else ""),
                str(len(flips.get("right_to_wrong", []))) if flips else "",
                str(len(flips.get("wrong_to_right", []))) if flips else "",
                str(entry["errors"]),
            ]
        )
    if len(rows) == 2:  # one model: no differences, no flips
        rows = [row[:3] + row[-1:] for row in rows]
    return rows


def _natural(name: str) -> tuple[Any, ...]:
    """recall@5 before recall@10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _details(part: dict[str, Any]) -> list[list[list[str]]]:
    """Per-subject accuracy (when there are subjects) and every metric (when there is
    more than the main one): right/wrong shares in %, text metrics as they are."""
    models = list(part["models"])
    tables = []
    groups = sorted({g for e in part["models"].values() for g in e["groups"]})
    if len(groups) > 1:
        rows = [["subject", *models]]
        for group in groups:
            values = [part["models"][m]["groups"].get(group) for m in models]
            rows.append([group] + [_number(v, part["metric"]) for v in values])
        tables.append(rows)
    names = sorted({k for e in part["models"].values() for k in e["metrics"]}, key=_natural)
    if len(names) > 1:
        share = part["metric"] in SHARES  # the other metrics are shares too
        rows = [["metric" + (" (%)" if share else ""), *models]]
        for name in names:
            values = [part["models"][m]["metrics"].get(name) for m in models]
            rows.append([name] + [_number(v, "correct" if share else name) for v in values])
        tables.append(rows)
    return tables


def _markdown_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]
    ]
    return "\n".join(lines) + "\n"


def _intro(summary: dict[str, Any]) -> str:
    models = summary["models"]
    if len(models) == 1:
        return f"Model: {models[0]}. Intervals are bootstrap 95% intervals of the mean."
    return (
        f"Models: {', '.join(models)}. Δ is against {summary['reference']} on the items "
        "both answered, with a paired bootstrap 95% interval."
    )


def markdown(summary: dict[str, Any], title: str) -> str:
    out = [f"# {title}\n", _intro(summary) + "\n"]
    for part in summary["parts"]:
        out.append(f"\n## {part['task']} ({part['scorer']})\n\n")
        out.append(_markdown_table(_table(part)))
        for table in _details(part):
            out.append("\n" + _markdown_table(table))
        for model, entry in part["models"].items():
            for kind, items in (entry.get("flips") or {}).items():
                if items:
                    out.append(f"\n{model} {kind.replace('_', ' ')}: {_listed(items)}\n")
    return "".join(out)


def _chart(part: dict[str, Any]) -> str:
    """An inline SVG bar chart of the main metric per model, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = part["metric"]
    scale = _scale(metric)
    models = [m for m, e in part["models"].items() if e["value"] is not None]
    if not models:
        return ""
    values, low, high = [], [], []
    for m in models:
        value = part["models"][m]["value"] * scale
        interval = part["models"][m]["interval"] or [value / scale] * 2
        values.append(value)
        low.append(value - interval[0] * scale)
        high.append(interval[1] * scale - value)
    figure, axis = plt.subplots(figsize=(max(3.4, 1.2 + 0.9 * len(models)), 2.6))
    axis.bar(models, values, yerr=[low, high], capsize=4, color="#4c78a8")
    axis.set_ylabel(LABELS.get(metric, metric))
    # Every metric is 0 or more; shares and judge scores run to 100 (a 0% bar is a bar
    # at the bottom of a 0-100 axis, not a dash on an axis around zero).
    top = 100.0 if metric in SHARES or metric == "score" else max(1.0, max(values) * 1.25)
    axis.set_ylim(0, max(top, max(v + h for v, h in zip(values, high, strict=True))))
    axis.set_title(f"{part['task']} ({part['scorer']})", fontsize=10)
    axis.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _html_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,"Noto Sans CJK SC",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
section{margin-bottom:2em}.flips{font-size:.9em;color:#555}svg{max-width:100%;height:auto}
"""


def html_report(summary: dict[str, Any], title: str) -> str:
    sections = []
    for part in summary["parts"]:
        flips = []
        for model, entry in part["models"].items():
            for kind, items in (entry.get("flips") or {}).items():
                if items:
                    flips.append(
                        f"<p class=flips>{html.escape(model)} {kind.replace('_', ' ')}: "
                        f"{html.escape(_listed(items))}</p>"
                    )
        tables = [_html_table(_table(part)), *(_html_table(t) for t in _details(part))]
        sections.append(
            f"<section><h2>{html.escape(part['task'])} ({html.escape(part['scorer'])})</h2>"
            f"{_chart(part)}{''.join(tables)}{''.join(flips)}</section>"
        )
    intro = _intro(summary)
    return (
        f"<!doctype html><html lang=zh><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(intro)}</p>{''.join(sections)}</body></html>"
    )
