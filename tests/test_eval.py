"""domainlm eval: scorers on hand-checked cases, prompts, log-likelihoods against a plain
forward pass, the run with experts, resume, reports, endpoint mode against a real server."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from domainlm.errors import DomainLMError, SourceError
from domainlm.eval import exam
from domainlm.eval.suite import load_suite
from domainlm.eval.text import corpus_bleu, text_scores
from tests.engine_helpers import make_expert, tiny_base

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("reply", "letters"),
    [
        ("答案是B", "B"),
        ("答案：(C)", "C"),
        ("正确答案为：Ａ", "A"),  # full-width
        ("故选BD。", "BD"),
        ("A、C", "AC"),
        ("正确答案是A和D", "AD"),
        ("B. 因为资产负债表反映财务状况", "B"),
        ("（D）理由如下", "D"),
        ("The answer is C.", "C"),
        ("答案：c", "C"),
        ("I think a bank is a company.", None),  # the article "a" is not option A
        ("不知道", None),
        ("A或者B都有可能", None),  # names two letters without choosing
    ],
)
def test_read_choice(reply: str, letters: str | None) -> None:
    assert exam.read_choice(reply, "ABCD") == letters


def test_read_choice_keeps_to_the_options() -> None:
    assert exam.read_choice("答案是E", "ABCD") is None
    assert exam.read_choice("答案是E", "ABCDE") == "E"


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_exam_files_and_their_mistakes(tmp_path: Path) -> None:
    good = _csv(
        tmp_path / "tax_val.csv", "id,question,A,B,C,D,answer\n1,q?,a,b,c,d,B\n2,r?,a,b,c,d,ad\n"
    )
    questions = exam.read_exam(good)
    assert [(q.subject, q.answer, q.multi) for q in questions] == [
        ("tax", "B", False), ("tax", "AD", True),
    ]  # fmt: skip
    with pytest.raises(SourceError, match=r"no_answer.csv:2: answer: no `answer` column"):
        exam.read_exam(_csv(tmp_path / "no_answer.csv", "question,A,B\nq?,a,b\n"))
    with pytest.raises(SourceError, match=r":2: answer: answer 'E' is not among the options AB"):
        exam.read_exam(_csv(tmp_path / "bad.csv", "question,A,B,answer\nq?,a,b,E\n"))
    with pytest.raises(SourceError, match="no questions"):
        exam.read_exam(_csv(tmp_path / "empty.csv", "question,A,B,answer\n"))
    (tmp_path / "list.json").write_text(
        json.dumps([{"question": "q", "A": "x", "B": "y", "answer": "A"}])
    )
    assert exam.read_exam(tmp_path / "list.json")[0].options == {"A": "x", "B": "y"}


def test_few_shot_prompt_is_c_eval_s() -> None:
    shot = exam.Question("1", "banking", "央行是？", {"A": "甲", "B": "乙"}, "B")
    question = exam.Question("2", "banking", "利率是？", {"A": "丙", "B": "丁"}, "A")
    assert exam.prompt(question, [shot]) == (
        "以下是中国关于banking考试的单项选择题，请选出其中的正确答案。\n\n"
        "央行是？\nA. 甲\nB. 乙\n答案： B\n\n"
        "利率是？\nA. 丙\nB. 丁\n答案："
    )


def test_the_suite_takes_shots_from_the_same_subject_and_kind() -> None:
    from domainlm.eval.run import plan

    suite = load_suite(ROOT / "recipes/eval/finance.yaml")
    units = plan(suite)
    multi = next(u for u in units if u.id == "accounting/4" and u.scorer == "generate")
    assert "多项选择题" in multi.prompt and multi.prompt.count("答案：") == 2  # one multi shot
    assert "实收资本" in multi.prompt  # the accounting dev question with two answers
    single = next(u for u in units if u.id == "banking/1" and u.scorer == "loglik")
    assert single.prompt.count("答案：") == 2 and "商业银行最主要的资金来源" in single.prompt
    # A multi-answer item by log-likelihood: every set of letters, as the shots write them.
    multi = next(u for u in units if u.id == "accounting/4" and u.scorer == "loglik")
    assert len(multi.continuations) == 15 and multi.continuations[:5] == [
        " A",
        " B",
        " C",
        " D",
        " AB",
    ]
    scores = [0.0] * 15
    scores[multi.continuations.index(" " + multi.reference)] = 1.0
    assert multi.score(scores) == (multi.reference, {"correct": 1.0})
    scores = [-float(i) for i in range(15)]  # " A" most likely: a single letter is wrong
    assert multi.score(scores) == ("A", {"correct": 0.0})
    assert exam.letter_sets("ABC") == ["A", "B", "C", "AB", "AC", "BC", "ABC"]


def test_text_metrics_by_hand() -> None:
    scores = text_scores("甲乙丙丁", "甲乙丙戊")
    assert scores["rouge-1-char"] == pytest.approx(75.0, abs=1e-3)
    assert scores["rouge-2-char"] == pytest.approx(200 / 3, abs=1e-3)
    # BLEU-4 on characters, NIST smoothing: precisions 3/4, 2/3, 1/2 and 0/1 -> 1/2.
    assert scores["bleu-4"] == pytest.approx(100 * (0.75 * (2 / 3) * 0.5 * 0.5) ** 0.25, abs=1e-2)
    same = text_scores("借款人应当按照约定的期限返还借款。", "借款人应当按照约定的期限返还借款。")
    assert same["rouge-l"] == pytest.approx(100, abs=1e-3) and same["bleu-4"] == pytest.approx(100)
    assert text_scores("", "参考答案")["rouge-l"] == 0.0
    assert corpus_bleu(["定金不得超过百分之二十"], ["定金不得超过百分之二十"]) == pytest.approx(100)


def test_loglik_equals_a_plain_forward_with_experts_mixed(tmp_path: Path) -> None:
    import torch

    from domainlm.engine.adapters import AdapterPool
    from domainlm.eval import loglik
    from domainlm.eval.models import Choice

    make_expert(tmp_path, "law", seed=1)
    pool = AdapterPool(tiny_base(), roots=[tmp_path])
    pool.add(tmp_path / "law")
    shared = (
        "以下是中国关于会计考试的单项选择题。\n\n" + "资产是什么？\nA. 甲\nB. 乙\n答案： B\n\n" * 3
    )
    jobs = [
        Choice(model, shared + f"问题{i}？\nA. 丙\nB. 丁\n答案：", [" A", " B"])
        for i in range(3) for model in ("base", "law")
    ] + [Choice("law", "定金是 ", ["合同的担保", "钱"])]  # fmt: skip
    ours = loglik.score_choices(pool, jobs, batch_rows=4)
    tokenizer = pool.base.tokenizer
    for job, scores in zip(jobs, ours, strict=True):
        for continuation, score in zip(job.continuations, scores, strict=True):
            context = job.context.rstrip()
            moved = job.context[len(context) :] + continuation
            ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
            whole = tokenizer(context + moved, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + whole[len(ctx) :]])
            names = [job.model if job.model != "base" else "__base__"]
            with torch.no_grad():
                logits = pool.model(input_ids=ids, adapter_names=names).logits[0]
            logprobs = torch.log_softmax(logits.float(), -1)
            expected = sum(float(logprobs[i - 1, ids[0, i]]) for i in range(len(ctx), ids.shape[1]))
            assert math.isclose(score, expected, abs_tol=1e-4), (job.model, continuation)
    assert ours[0] != ours[1]  # the expert changes the scores


def _suite(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(
        f"""
name: mini
tasks:
  - name: exam
    type: exam
    data: {ROOT}/examples/eval/finance_val/*.csv
    dev: {ROOT}/examples/eval/finance_dev/*.csv
    shots: 1
    max_new_tokens: 8
  - name: consult
    type: text
    data: {ROOT}/examples/eval/law_consult.jsonl
    max_new_tokens: 12
{extra}"""
    )
    return path


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from domainlm.chat.formats import get_format
    from domainlm.engine.adapters import AdapterPool
    from domainlm.eval.models import LocalModels

    folder = tmp_path_factory.mktemp("experts")
    make_expert(folder, "law", seed=3)
    base = tiny_base()
    pool = AdapterPool(base, roots=[folder])
    pool.add(folder / "law")
    models = LocalModels(pool, get_format("hf", base.tokenizer))
    yield models
    models.close()


def test_a_run_with_an_expert_writes_results_summary_and_reports(
    local: Any, tmp_path: Path
) -> None:
    from domainlm.eval.evaluate import evaluate

    suite = load_suite(_suite(tmp_path))
    summary = evaluate(suite, local, ["base", "law"], tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    # 9 questions x 2 scorers + 3 consultations, per model.
    assert len(rows) == 2 * (9 * 2 + 3)
    assert {r["model"] for r in rows} == {"base", "law"} and not any("error" in r for r in rows)
    parts = {(p["task"], p["scorer"]): p for p in summary["parts"]}
    exam_part = parts[("exam", "loglik")]
    law = exam_part["models"]["law"]
    base = exam_part["models"]["base"]
    assert law["delta"]["value"] == pytest.approx(law["value"] - base["value"])
    assert set(law["flips"]) == {"right_to_wrong", "wrong_to_right"}
    assert set(base["groups"]) == {"accounting", "banking"}
    assert parts[("consult", "text")]["models"]["law"]["metrics"]["bleu-4"] >= 0
    html = (tmp_path / "out/report.html").read_text()
    assert html.count("<svg") == 3  # a chart per task and scorer, inline
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)  # nothing fetched to show it
    assert "## exam (loglik)" in (tmp_path / "out/report.md").read_text()


def test_stop_and_resume(local: Any, tmp_path: Path) -> None:
    from domainlm.eval.evaluate import evaluate

    suite = load_suite(_suite(tmp_path))
    out = tmp_path / "out"

    def stop_after(done: int, total: int) -> None:
        if done == 9:  # the exam's log-likelihood units
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(suite, local, ["base"], out, progress=stop_after)
    results = out / "results.jsonl"
    with results.open("a") as handle:
        handle.write('{"key": "cut off')  # a line cut by the stop
    assert len(results.read_text().splitlines()) == 10
    with pytest.raises(DomainLMError, match="--resume"):
        evaluate(suite, local, ["base"], out)
    seen: list[int] = []
    evaluate(suite, local, ["base"], out, resume=True, progress=lambda d, t: seen.append(d))
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert seen[0] == 9 and len(rows) == 21 and len({r["key"] for r in rows}) == 21


def test_suite_and_cli_mistakes_are_one_line(tmp_path: Path, cli: Any) -> None:
    bad_type = tmp_path / "bad.yaml"
    bad_type.write_text("name: x\ntasks:\n  - {name: a, type: quiz, data: x.csv}\n")
    with pytest.raises(DomainLMError, match="unknown task type"):
        load_suite(bad_type)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\ntasks:\n  - {name: a, type: exam, data: nowhere/*.csv}\n")
    code, _, err = cli("eval", str(missing), "--model", "tiny")
    assert code == 2 and "task a: no data file matches" in err and "Traceback" not in err
    code, _, err = cli("eval", str(_suite(tmp_path)), "--model", "tiny", "--models", "base,nobody",
                 "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 2 and "unknown model nobody (choose from base)" in err
    code, _, err = cli("eval", str(_suite(tmp_path)), "tasks.0.shots=-1", "--model", "tiny")
    assert code == 2 and "tasks.0.exam.shots" in err


def test_every_shipped_suite_loads(tmp_path: Path) -> None:
    """Every suite in recipes/eval/ starts with its command and plans on a fresh checkout
    (a citations task pointed at a test KB: the demo's is not built there)."""
    from domainlm.eval.run import plan
    from domainlm.eval.suite import CitationTask, RetrievalTask
    from domainlm.kb.base import build
    from tests.test_kb import make_law_db

    kb = tmp_path / "kb"
    build(kb, [str(make_law_db(tmp_path / "laws.db"))], workers=1)
    suites = sorted((ROOT / "recipes/eval").glob("*.yaml"))
    assert suites
    for path in suites:
        assert path.read_text().startswith("# domainlm eval ")
        tasks = load_suite(path).tasks
        kbs = [
            f"tasks.{i}.kb={kb}"
            for i, t in enumerate(tasks)
            if isinstance(t, CitationTask | RetrievalTask)
        ]
        assert plan(load_suite(path, kbs))


def test_endpoint_mode_against_a_real_server_agrees_with_local(local: Any, tmp_path: Path) -> None:
    """The same suite through `domainlm serve` on 127.0.0.1 and in process: the same greedy
    answers; an endpoint that is down is one clear error."""
    from domainlm.engine.assistant import Assistant
    from domainlm.engine.local import LocalEngine
    from domainlm.eval.models import EndpointModels
    from domainlm.eval.run import run_suite
    from domainlm.serve.runtime import Runtime
    from domainlm.serve.settings import load_settings
    from tests.serve_helpers import serving

    suite = load_suite(_suite(tmp_path), ["tasks.0.scorers=[generate]"])
    settings = load_settings(None, ["model=tiny"])
    here = run_suite(suite, local, ["base", "law"], tmp_path / "local")
    # The same model and expert behind the server, with an engine of its own (the server
    # closes it when it stops).
    engine = LocalEngine(local.pool)
    runtime = Runtime(settings, local.pool, engine, local.format)
    runtime.raw = Assistant(local.pool, local.format, engine=engine)
    # First the endpoint is down: every item records its error, the run goes on.
    down = EndpointModels("http://127.0.0.1:9/v1", None, ["base", "law"], retries=0)
    failed = run_suite(suite, down, ["base", "law"], tmp_path / "remote")
    assert failed and all("Connection error" in r["error"] for r in failed)
    with serving(runtime) as (url, _):
        remote = EndpointModels(url + "/v1", None, ["base", "law"])
        remote.check()
        # Resumed once it is up: the failed items are tried again and answered.
        there = run_suite(suite, remote, ["base", "law"], tmp_path / "remote", resume=True)
    assert len(there) == len(failed) == len(here)
    assert not [r["error"] for r in there + here if "error" in r]
    answer = {(r["key"], r["model"]): r.get("reply", r["prediction"]) for r in here}
    assert {(r["key"], r["model"]): r.get("reply", r["prediction"]) for r in there} == answer
    down = EndpointModels("http://127.0.0.1:9/v1", None, ["base"])
    with pytest.raises(
        DomainLMError, match=re.escape("endpoint http://127.0.0.1:9/v1: cannot connect")
    ):
        down.check()


@pytest.mark.parametrize(
    ("reply", "value", "percent"),
    [
        ("所以，该项贷款的年利率为15.13%。", 15.13, True),
        ("本利和=10000×(1+5%)^3≈11,576.25元", 11576.25, False),
        ("共计1.5万元", 15000.0, False),
        ("The answer is 0.1513.", 0.1513, False),
        ("答案：－３.５％", -3.5, True),  # full width
        ("第一年100元，第二年110元，合计210元", 210.0, False),
    ],
)
def test_final_number(reply: str, value: float, percent: bool) -> None:
    from domainlm.eval.compute import Stated, final_number

    assert final_number(reply) == Stated(value, percent)


def test_computation_scoring_by_hand() -> None:
    from domainlm.eval.compute import Stated, close, formula_value, reference_number, writes_formula

    assert close(Stated(15.13, True), Stated(0.1513), 0.001)  # a percentage is its fraction
    assert not close(Stated(15.13), Stated(0.1513), 0.001)
    assert close(Stated(11576), Stated(11576.25), 0.001) and not close(
        Stated(11500), Stated(11576.25), 0.001
    )
    assert reference_number("增长率为(920-800)/800=15%") == Stated(15.0, True)
    assert formula_value("10000×(1+0.05)**3") == pytest.approx(11576.25)
    assert writes_formula("本利和=10000×(1+0.05)^3=11576.25元", 11576.25, 1e-4)
    assert not writes_formula("答案是11576.25元", 11576.25, 1e-4)  # a result, not a formula
    with pytest.raises(ValueError):
        formula_value("__import__('os').system('id')")  # the calculator, never eval


TOOLALPACA = [
    {
        "Name": "Weather",
        "Function_Description": {
            "getForecast": 'Forecast for a city.\nParameters: {"city": "string. The city.", '
            '"days": "integer. How many days.", "unit": "string. One of: [c, f]. Unit."}'
            "\nOutput: Successful response.",
            "getAlerts": "Weather alerts.\nParameters: {}\nOutput: Successful response.",
        },
        "Instructions": ["Forecast for Paris for 3 days?", "Any alerts?", "Just chatting"],
        "Golden_Answers": [
            [{"Action": "getForecast", "Action_Input": '{"city": "Paris", "days": 3, "unit": ""}'}],
            [{"Action": "getAlerts", "Action_Input": "{}"}],
            [],
        ],
    }
]


def test_toolalpaca_items_and_call_scores() -> None:
    from domainlm.eval.toolcalls import read_toolalpaca, score_call

    items = read_toolalpaca(TOOLALPACA, "sample.json")
    assert [i["id"] for i in items] == ["Weather/0", "Weather/1"]  # nothing to call: skipped
    forecast = items[0]["tools"][0]["function"]
    assert forecast["parameters"]["properties"]["days"]["type"] == "integer"
    assert forecast["parameters"]["properties"]["unit"]["enum"] == ["c", "f"]
    gold = items[0]["gold"]
    call = {"name": "getForecast", "arguments": {"city": "paris ", "days": "3"}}
    assert score_call([call], gold)[1] == {
        "correct": 1.0,
        "name": 1.0,
        "arguments": 1.0,
        "called": 1.0,
    }
    half = {"name": "getForecast", "arguments": {"city": "Paris", "days": 5}}
    assert score_call([half], gold)[1] == {
        "correct": 0.0,
        "name": 1.0,
        "arguments": 0.5,
        "called": 1.0,
    }
    extra = {"name": "getForecast", "arguments": {"city": "Paris", "days": 3, "unit": "f"}}
    assert score_call([extra], gold)[1]["correct"] == 0.0  # an argument nobody asked for
    assert score_call([{"name": "getAlerts", "arguments": {}}], gold)[1]["name"] == 0.0
    assert score_call([], gold)[1]["called"] == 0.0


def test_citation_scores_against_the_kb(tmp_path: Path) -> None:
    from domainlm.eval.models import Reply
    from domainlm.eval.run import plan
    from domainlm.kb.base import build
    from tests.test_kb import make_law_db

    build(tmp_path / "kb", [str(make_law_db(tmp_path / "laws.db"))], workers=1)
    kbs = [f"tasks.1.kb={tmp_path / 'kb'}", f"tasks.2.kb={tmp_path / 'kb'}"]
    suite = load_suite(ROOT / "recipes/eval/law.yaml", kbs)
    unit = next(u for u in plan(suite) if u.scorer == "citations")
    _, honest = unit.score(Reply("依据《民法典》第五百八十六条，定金不得超过百分之二十。"))
    assert honest["honest"] == 1.0 and honest["cites"] == 1.0
    _, made_up = unit.score(Reply("依据《民法典》第九千条，应当双倍返还。"))
    assert made_up["honest"] == 0.0 and made_up["fabricated"] == 1.0
    _, silent = unit.score(Reply("可以起诉。"))
    assert silent["cites"] == 0.0 and silent["honest"] == 1.0
    with pytest.raises(DomainLMError, match="no knowledge base at"):
        plan(load_suite(ROOT / "recipes/eval/law.yaml", [f"tasks.1.kb={tmp_path}", kbs[1]]))
    # Retrieval: scored once, from the KB's own ranking, whatever the models.
    retrieval = load_suite(ROOT / "recipes/eval/law.yaml", [f"tasks.1.kb={tmp_path / 'kb'}",
                                                            f"tasks.2.kb={tmp_path / 'kb'}"])  # fmt: skip
    first = next(u for u in plan(retrieval) if u.scorer == "retrieval")
    assert not first.needs_model and "587" in first.reference
    found, scores = first.score(first.prompt)
    assert found.startswith("中华人民共和国民法典 587; 中华人民共和国民法典 586")  # 587 first
    assert (scores["recall@1"], scores["recall@3"], scores["rr"]) == (1.0, 1.0, 1.0)


def test_tools_and_tool_call_tasks_run_with_experts(local: Any, tmp_path: Path) -> None:
    from domainlm.eval.run import run_suite

    path = tmp_path / "suite.yaml"
    path.write_text(
        f"""
name: calc
tasks:
  - {{name: calc, type: computation, data: {ROOT}/examples/eval/fincalc.jsonl, limit: 2,
      tools: [finance], max_new_tokens: 16}}
  - {{name: calls, type: toolcall, data: {ROOT}/examples/eval/tool_calls.jsonl, limit: 2,
      max_new_tokens: 16}}
"""
    )
    rows = run_suite(load_suite(path), local, ["base", "law"], tmp_path / "out")
    assert not [r["error"] for r in rows if "error" in r]
    assert {(r["scorer"], r["model"]) for r in rows} == {
        ("tools", "base"), ("tools", "law"), ("toolcall", "base"), ("toolcall", "law"),
    }  # fmt: skip
    calls = [r for r in rows if r["scorer"] == "toolcall"]
    assert all(set(r["score"]) == {"correct", "name", "arguments", "called"} for r in calls)
    assert all("formula" in r["score"] for r in rows if r["scorer"] == "tools")


def test_read_verdict_is_strict() -> None:
    from domainlm.eval.judge import DISC_CRITERIA, read_verdict

    good = '{"accuracy": 4, "usefulness": 3, "language": 5, "reflection": 2}'
    assert read_verdict(good, DISC_CRITERIA, 5)["language"] == 5.0
    assert read_verdict(f"```json\n{good}\n```", DISC_CRITERIA, 5)["accuracy"] == 4.0
    for bad in (
        "Good answer. " + good,  # prose around it
        '{"accuracy": 4, "usefulness": 3, "language": 5}',  # one missing
        '{"accuracy": 6, "usefulness": 3, "language": 5, "reflection": 2}',  # out of range
        '{"accuracy": 4.5, "usefulness": 3, "language": 5, "reflection": 2}',  # not an integer
        "[4, 3, 5, 2]",
    ):
        with pytest.raises(DomainLMError, match="off-format"):
            read_verdict(bad, DISC_CRITERIA, 5)


def test_a_judge_behind_a_real_server(local: Any, tmp_path: Path) -> None:
    """Answers from the local models, judged by a model behind an OpenAI-compatible server
    on 127.0.0.1 (scripted verdicts): a good verdict scores, off-format ones are the items'
    errors with the raw verdict kept, and the run goes on."""
    from domainlm.engine.assistant import Assistant
    from domainlm.eval.run import run_suite
    from domainlm.serve.runtime import Runtime
    from domainlm.serve.settings import load_settings
    from tests.serve_helpers import ScriptedEngine, serving

    verdicts = [
        '{"accuracy": 4, "usefulness": 3, "language": 5, "reflection": 2}',
        'Fine answer: {"accuracy": 4, "usefulness": 3, "language": 5, "reflection": 2}',
        '{"accuracy": 9, "usefulness": 3, "language": 5, "reflection": 2}',
    ]
    engine = ScriptedEngine(local.pool.base.tokenizer, verdicts)
    runtime = Runtime(load_settings(None, ["model=tiny"]), local.pool, engine, local.format)
    runtime.raw = Assistant(local.pool, local.format, engine=engine)
    with serving(runtime) as (url, _):
        path = tmp_path / "suite.yaml"
        path.write_text(
            f"name: judged\ntasks:\n  - {{name: j, type: judge, data: {ROOT}/examples/eval/"
            f"law_consult.jsonl, max_new_tokens: 8, judge: {{url: '{url}/v1', model: base}}}}\n"
        )
        rows = run_suite(load_suite(path), local, ["base"], tmp_path / "out")
    judged = [r for r in rows if "error" not in r]
    assert len(judged) == 1 and judged[0]["score"]["score"] == pytest.approx(62.5)
    assert judged[0]["verdict"] == verdicts[0] and "【参考答案】" in judged[0]["judge_prompt"]
    errors = sorted(r["error"] for r in rows if "error" in r)
    assert len(errors) == 2 and all("judge answered off-format" in e for e in errors)
    assert any("accuracy = 9" in e for e in errors)


def test_summary_intervals_flips_and_forgetting() -> None:
    from domainlm.eval.report import markdown
    from domainlm.eval.summary import summarise

    def rows(task: str, model: str, right: int) -> list[dict[str, Any]]:
        return [
            {"task": task, "scorer": "generate", "id": str(i), "group": "g", "model": model,
             "score": {"correct": float(i < right)}}
            for i in range(20)
        ]  # fmt: skip

    data = rows("general", "base", 18) + rows("general", "fin", 6) + rows("exam", "base", 10)
    data += rows("exam", "fin", 11) + [{"task": "exam", "scorer": "generate", "id": "x",
                                         "model": "fin", "error": "endpoint: 500"}]  # fmt: skip
    summary = summarise(data, ["base", "fin"], tasks=["exam", "general"], regression={"general"})
    exam_part, general = summary["parts"]
    assert (exam_part["task"], general["task"]) == ("exam", "general")  # the suite's order
    fin = general["models"]["fin"]
    assert fin["delta"]["value"] == pytest.approx(-0.6) and fin["forgot"]
    assert fin["delta"]["interval"][1] < 0 < general["models"]["base"]["interval"][0]
    assert fin["flips"] == {"right_to_wrong": [str(i) for i in sorted(range(6, 18), key=str)],
                            "wrong_to_right": []}  # fmt: skip
    assert "forgot" not in exam_part["models"]["fin"] and exam_part["models"]["fin"]["errors"] == 1
    assert exam_part["models"]["fin"]["flips"]["wrong_to_right"] == ["10"]
    assert "⚠ forgetting" in markdown(summary, "t")
