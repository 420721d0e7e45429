"""Evaluation: suites of tasks run on the base and its experts (or an OpenAI endpoint),
with before/after reports.

In: a suite YAML (`eval.suite`), models. Out: a folder with results.jsonl, summary.json,
report.md and report.html (`eval.run`, `eval.summary`, `eval.report`).
"""
