"""The synth run's report as Markdown: rows per generator, what each check removed (with
examples), citations, tokens and cost, failed items."""

from __future__ import annotations

from typing import Any


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# synth run: {report['name']}", ""]
    teacher = report.get("teacher")
    if teacher:
        lines += [f"Teacher: `{teacher['model']}` at {teacher['url']}", ""]
    lines += ["| generator | items | failed | rows | kept |", "|---|---|---|---|---|"]
    for name, counts in report["generators"].items():
        lines.append(
            f"| {_cell(name)} | {counts.get('items', 0)} | {counts.get('failed', 0)} | "
            f"{counts.get('rows', 0)} | {counts.get('kept', 0)} |"
        )
    lines += ["", f"{report['kept']} of {report['rows']} rows kept.", "",
              "| check | removed |", "|---|---|"]  # fmt: skip
    lines += [f"| {check} | {count} |" for check, count in report["removed"].items()]
    for check, examples in report["examples"].items():
        lines += ["", f"## {check}: examples", ""]
        lines += [f"- `{_cell(e['item'])}` {_cell(e['question'])} — {_cell(e['reason'])}"
                  for e in examples]  # fmt: skip
    citations = report["citations"]
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(citations["verdicts"].items())) or "none"
    lines += ["", f"Citations checked: {verdicts}; repaired {citations['repaired']}.", ""]
    usage = report["usage"]
    lines.append(
        f"Teacher: {usage['requests']} requests, {usage['retries']} retries, "
        f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
        + (f" ({usage['unreported']} answers without usage)" if usage["unreported"] else "")
        + f", cost {report['cost']:.4f}."
    )
    if report["failures"]:
        lines += ["", f"## failed items ({report['failed']}; --resume tries them again)", ""]
        lines += [f"- `{_cell(f['item'])}` {f['kind']}: {_cell(f['error'])}"
                  for f in report["failures"]]  # fmt: skip
    return "\n".join(lines) + "\n"
