"""synth: every generator against a scripted teacher on 127.0.0.1 and against a real
`domainlm serve` (tiny model); the checks; a teacher that fails, stalls or answers
off-format; resume; bad recipes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from domainlm.errors import DomainLMError
from domainlm.synth.recipe import Checks, load_synth_recipe
from domainlm.synth.run import synthesise
from tests.synth_helpers import MODEL, scripted_teacher

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "examples" / "docs"


def _recipe(tmp_path: Path, kb: Any, url: str, body: str, **extra: str) -> Path:
    teacher = (
        f"teacher: {{url: '{url}', model: {MODEL}, concurrency: 3, retries: 2, "
        f"backoff_s: 0.01, timeout_s: 5}}\n"
    )
    path = tmp_path / "synth.yaml"
    path.write_text(f"name: t\nkb: {kb.folder}\n{teacher}{body}", encoding="utf-8")
    return path


EVERY = f"""generators:
  - {{type: statute_qa, laws: [民法典], limit: 4}}
  - {{type: document_qa, documents: {DOCS}, limit: 4}}
  - {{type: self_chat, topics: [朋友借钱不还, 虚构的借款纠纷, 旧法合同纠纷], turns: 2}}
  - {{type: grounded, laws: [民法典], limit: 3, distractors: 1}}
  - {{type: tool_use, topics: [复利终值, 错的复利], per_topic: 1}}
"""


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_generator_against_a_scripted_teacher(statute_kb: Any, tmp_path: Path) -> None:
    from domainlm.chat.conversation import Conversation
    from domainlm.engine.assistant import ARTICLES_HEADER

    with scripted_teacher() as (url, faults):
        recipe = load_synth_recipe(_recipe(tmp_path, statute_kb, url, EVERY))
        report = synthesise(recipe, tmp_path / "out")
    per = report["generators"]
    assert per["statute_qa"] == {"items": 8, "rows": 8, "kept": 8}  # 4 articles, both ways
    assert per["document_qa"]["rows"] == 8 and per["document_qa"]["kept"] >= 6
    assert per["self_chat"]["kept"] == 1  # the two others cite fabricated or repealed law
    reasons = [e["reason"] for e in report["examples"]["citations"]]
    assert any("no_such_article" in r for r in reasons) and any("repealed" in r for r in reasons)
    assert report["removed"]["tool_results"] == 1 and per["tool_use"]["kept"] == 1
    assert "stated 12000, the tool gave 11576.25" in report["examples"]["tool_results"][0]["reason"]
    assert report["usage"]["requests"] == faults["requests"] > 0
    assert report["usage"]["prompt_tokens"] > 0 and report["failed"] == 0

    rows = _rows(tmp_path / "out" / "data.jsonl")
    assert len(rows) == report["kept"]
    for row in rows:  # what `domainlm train` reads, with its provenance
        Conversation.from_record(row)
        assert {"generator", "type", "item", "teacher", "template", "source"} <= set(row["meta"])
    by_type = {row["meta"]["type"]: row for row in rows}
    statute = by_type["statute_qa"]["messages"]
    assert "现行有效" in statute[-1]["content"] and statute_kb.verify(statute[-1]["content"])
    tool = by_type["tool_use"]
    calls = [m for m in tool["messages"] if m.get("tool_calls")]
    assert calls and calls[0]["tool_calls"][0]["function"]["name"] == "calculator"
    assert [m["content"] for m in tool["messages"] if m["role"] == "tool"] == ["11576.250000000002"]
    assert tool["tools"] and tool["meta"]["source"]["computed"] == [pytest.approx(11576.25)]
    grounded = [r for r in rows if r["meta"]["type"] == "grounded"]
    for row in grounded:  # the prompt as the Assistant renders it, an unrelated article in it
        system = row["messages"][0]["content"]
        assert ARTICLES_HEADER in system
        assert len(re.findall(r"\n\d\. 《", system)) == 3 + 1
        assert row["meta"]["source"]["distractors"]
    assert report["teacher"] == {"url": url, "model": MODEL}
    rejected = _rows(tmp_path / "out" / "rejected.jsonl")
    assert len(rejected) == report["rows"] - report["kept"]
    assert all(r["rejected"]["check"] and r["rejected"]["reason"] for r in rejected)
    assert "## citations: examples" in (tmp_path / "out" / "report.md").read_text("utf-8")


def test_synthesised_rows_train_as_they_are(
    statute_kb: Any, tmp_path: Path, cli: Any, tokenizer: Any
) -> None:
    """data.jsonl is what `domainlm train` takes; tool traces render to ChatGLM3's turns."""
    from domainlm.chat.conversation import Conversation
    from domainlm.chat.formats import get_format

    body = (
        "generators:\n  - {type: statute_qa, laws: [民法典], limit: 3}\n"
        "  - {type: tool_use, topics: [复利终值], per_topic: 1}\n"
    )
    with scripted_teacher() as (url, _):
        recipe = load_synth_recipe(_recipe(tmp_path, statute_kb, url, body))
        report = synthesise(recipe, tmp_path / "out")
    assert report["kept"] == 7
    rows = _rows(tmp_path / "out" / "data.jsonl")
    traced = Conversation.from_record(next(r for r in rows if r["meta"]["type"] == "tool_use"))
    rendered = get_format("chatglm3", tokenizer).render(traced)
    text = tokenizer.decode(rendered.input_ids)
    assert "<|observation|>" in text and "calculator" in text and "11576.25" in text
    train = tmp_path / "train.yaml"
    train.write_text(
        "name: synth-law\nbase: {path: tiny, chat_format: hf}\n"
        f"datasets: [{{path: {tmp_path / 'out' / 'data.jsonl'}}}]\n"
        "lora: {r: 4, alpha: 8}\noptim: {max_steps: 2, batch_size: 2, max_seq_len: 512}\n"
        f"output_dir: {tmp_path / 'experts'}\n",
        encoding="utf-8",
    )
    code, _, err = cli("train", train, "-q")
    assert code == 0, err
    assert (tmp_path / "experts" / "synth-law" / "adapter_model.safetensors").is_file()


def test_statute_qa_of_repealed_law_and_document_qa_from_a_kb(
    statute_kb: Any, tmp_path: Path, cli: Any
) -> None:
    """Articles no longer in force are recited with their status (not dropped as repealed
    citations); documents may come from a KB of their own."""
    assert cli("kb", "build", tmp_path / "docskb", "--source", DOCS)[0] == 0
    body = (
        "generators:\n  - {type: statute_qa, laws: [乡镇企业法], limit: 3, past_versions: true, "
        "reverse: false}\n"
        f"  - {{type: document_qa, documents: {tmp_path / 'docskb'}, limit: 2}}\n"
    )
    with scripted_teacher() as (url, _):
        report = synthesise(load_synth_recipe(_recipe(tmp_path, statute_kb, url, body)),
                            tmp_path / "out")  # fmt: skip
    assert report["generators"]["statute_qa"] == {"items": 3, "rows": 3, "kept": 3}
    rows = _rows(tmp_path / "out" / "data.jsonl")
    recited = [r for r in rows if r["meta"]["type"] == "statute_qa"]
    assert all("已废止" in r["messages"][-1]["content"] for r in recited)
    assert (
        report["citations"]["verdicts"] == {} or "repealed" not in report["citations"]["verdicts"]
    )
    documents = [r for r in rows if r["meta"]["type"] == "document_qa"]
    assert documents and all(isinstance(r["meta"]["source"]["chunk"], int) for r in documents)


def test_a_teacher_that_fails_is_retried_or_recorded_per_item(
    statute_kb: Any, tmp_path: Path
) -> None:
    body = f"generators:\n  - {{type: document_qa, documents: {DOCS}, limit: 3}}\n"
    with scripted_teacher({"429_times": 2, "garbage_times": 1}) as (url, faults):
        recipe = load_synth_recipe(_recipe(tmp_path, statute_kb, url, body))
        report = synthesise(recipe, tmp_path / "a")
        assert report["usage"]["retries"] == 3 and report["failed"] == 0
        # A server that keeps failing: each item records its error after its retries,
        # the run ends with what it has, nothing half-written.
        faults["500_times"] = 10_000
        report = synthesise(recipe, tmp_path / "b")
        assert report["failed"] == 3 and report["kept"] == 0
        assert {f["kind"] for f in report["failures"]} == {"server_error"}
        assert report["usage"]["retries"] == 3 * 2
        lines = _rows(tmp_path / "b" / "items.jsonl")
        assert len(lines) == 3 and all("fault 500" in line["error"] for line in lines)
        # Resumed once the server is well: only the failed items are made, once each.
        faults["500_times"] = 0
        report = synthesise(recipe, tmp_path / "b", resume=True)
        assert report["failed"] == 0 and report["generators"]["document_qa"]["rows"] == 6
        made = [line["key"] for line in _rows(tmp_path / "b" / "items.jsonl") if "rows" in line]
        assert sorted(made) == sorted(set(made)) and len(made) == 3
        # Slower than the timeout: retried, then the item's error.
        faults["stall"] = 1.0
        slow = load_synth_recipe(recipe_path := _recipe(tmp_path, statute_kb, url, body),
                                 ["teacher.timeout_s=0.2", "teacher.retries=1"])  # fmt: skip
        report = synthesise(slow, tmp_path / "c", limit=1)
        assert recipe_path.exists() and report["failures"][0]["kind"] == "timeout"


def test_off_format_answers_are_asked_again_then_recorded(statute_kb: Any, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("第一段材料，OFFFORMAT。" * 10, encoding="utf-8")
    (docs / "b.txt").write_text("第二段材料，OFFFORMAT-FIXABLE。" * 10, encoding="utf-8")
    body = f"generators:\n  - {{type: document_qa, documents: {docs}}}\n"
    with scripted_teacher() as (url, faults):
        recipe = load_synth_recipe(_recipe(tmp_path, statute_kb, url, body))
        report = synthesise(recipe, tmp_path / "out")
    assert report["failed"] == 1 and report["failures"][0]["kind"] == "off_format"
    line = next(x for x in _rows(tmp_path / "out" / "items.jsonl") if "error" in x)
    assert line["raw"] == "还是不对" and "a.txt" in line["key"]
    assert report["generators"]["document_qa"]["rows"] == 1  # b: fixed when asked again
    corrections = [
        b for b in faults["bodies"] if "不是要求的JSON格式" in b["messages"][-1]["content"]
    ]
    assert len(corrections) == 2


def test_resume_after_a_stop_makes_no_duplicates(statute_kb: Any, tmp_path: Path) -> None:
    body = (
        f"generators:\n  - {{type: statute_qa, laws: [民法典], limit: 5}}\n"
        f"  - {{type: document_qa, documents: {DOCS}, limit: 4}}\n"
    )
    with scripted_teacher() as (url, _):
        recipe = load_synth_recipe(_recipe(tmp_path, statute_kb, url, body))
        first = synthesise(recipe, tmp_path / "out", limit=2)  # a trial run
        assert first["generators"]["statute_qa"]["items"] == 2
        with pytest.raises(DomainLMError, match="pass --resume"):
            synthesise(recipe, tmp_path / "out")
        items = tmp_path / "out" / "items.jsonl"
        with items.open("a", encoding="utf-8") as handle:  # killed while writing a line
            handle.write('{"key": "document_qa:loan_terms.txt#0", "rows": [{"rec')
        whole = synthesise(recipe, tmp_path / "out", resume=True)
        again = synthesise(recipe, tmp_path / "out", resume=True)  # nothing left to make
    keys = [line["key"] for line in _rows(items)]
    assert len(keys) == len(set(keys)) == 10 + 4
    assert whole["kept"] == again["kept"] and whole["generators"] == again["generators"]
    data = _rows(tmp_path / "out" / "data.jsonl")
    assert len({row["meta"]["item"] + row["messages"][-1]["content"] for row in data}) == len(data)
    changed = load_synth_recipe(_recipe(tmp_path, statute_kb, url, body), ["seed=7"])
    with pytest.raises(DomainLMError, match="seed changed since this run began"):
        synthesise(changed, tmp_path / "out", resume=True)


def test_every_generator_against_a_real_domainlm_server(statute_kb: Any, tmp_path: Path) -> None:
    """The mechanics with `domainlm serve` (tiny model) as the teacher: every generator
    runs, what the random model writes is checked like anything else, nothing crashes."""
    from domainlm.chat.formats import get_format
    from domainlm.engine.adapters import AdapterPool
    from domainlm.engine.assistant import Assistant
    from domainlm.engine.local import LocalEngine
    from domainlm.serve.runtime import Runtime
    from domainlm.serve.settings import load_settings
    from tests.engine_helpers import tiny_base
    from tests.serve_helpers import serving

    base = tiny_base()
    pool = AdapterPool(base)
    chat_format = get_format("hf", base.tokenizer)
    engine = LocalEngine(pool)
    runtime = Runtime(load_settings(None, ["model=tiny"]), pool, engine, chat_format)
    runtime.raw = Assistant(pool, chat_format, engine=engine)
    with serving(runtime) as (url, _):
        path = _recipe(tmp_path, statute_kb, url + "/v1", EVERY.replace("turns: 2", "turns: 1"))
        recipe = load_synth_recipe(
            path, ["teacher.model=base", "teacher.max_tokens=24", "teacher.format_retries=0"]
        )
        report = synthesise(recipe, tmp_path / "out")
    per = report["generators"]
    assert set(per) == {"statute_qa", "document_qa", "self_chat", "grounded", "tool_use"}
    assert per["statute_qa"]["kept"] == 8 and report["usage"]["requests"] > 0
    assert report["usage"]["completion_tokens"] > 0
    # The random model writes no JSON: document and tool items fail off-format, recorded.
    assert per["tool_use"].get("failed_off_format") == 2
    assert per["self_chat"]["rows"] == 3 and per["grounded"]["rows"] == 3
    assert report["kept"] == len(_rows(tmp_path / "out" / "data.jsonl"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("kb: /nonexistent/kb\n", "not a knowledge base"),
        ("generators:\n  - {type: document_qa, documents: /nonexistent/docs}\n",
         "no such file or folder"),
        ("generators:\n  - {type: self_chat, topics: []}\n", "no topics"),
        ("generators:\n  - {type: grounded, questions_file: EMPTY}\n", "is empty"),
        ("generators:\n  - {type: statute_qa, laws: [不存在法]}\n", "not in the KB"),
        ("generators:\n  - {type: statute_qa, laws: [合同法]}\n", "only from the clause that"),
        ("generators:\n  - {type: document_qa, documents: EMPTYDIR}\n", "no documents"),
    ],
)  # fmt: skip
def test_bad_recipes_are_one_clear_error(
    statute_kb: Any, tmp_path: Path, body: str, message: str, cli: Any
) -> None:
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    (tmp_path / "emptydir").mkdir()
    body = body.replace("EMPTYDIR", str(tmp_path / "emptydir"))
    body = body.replace("EMPTY", str(tmp_path / "empty.txt"))
    if "generators" not in body:
        body += "generators:\n  - {type: statute_qa}\n"
    path = _recipe(tmp_path, statute_kb, "http://127.0.0.1:9/v1", "")
    text = path.read_text(encoding="utf-8")
    if body.startswith("kb:"):
        text = re.sub(r"kb: .*\n", body.split("generators")[0], text)
        body = body[body.index("generators") :]
    path.write_text(text + body, encoding="utf-8")
    code, _, err = cli("synth", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "data.jsonl").exists()


def test_a_teacher_that_is_down_is_an_error_before_any_work(
    statute_kb: Any, tmp_path: Path, cli: Any
) -> None:
    path = _recipe(tmp_path, statute_kb, "http://127.0.0.1:9/v1",
                   f"generators:\n  - {{type: document_qa, documents: {DOCS}}}\n")  # fmt: skip
    code, _, err = cli("synth", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and "cannot connect" in err and "is the server running?" in err
    for bad, message in (
        ("generators: []", "generators: List should have at least 1 item"),
        ("generators:\n  - {type: tool_use}\nteacher: null", "need a `teacher`"),
        ("generators:\n  - {type: statute_qa, colour: red}", "unknown setting"),
    ):
        other = tmp_path / "bad.yaml"
        other.write_text(f"name: x\nkb: {statute_kb.folder}\n{bad}\n", encoding="utf-8")
        code, _, err = cli("synth", str(other))
        assert code == 2 and message in err, err


def test_the_cli_runs_a_recipe_and_reports(statute_kb: Any, tmp_path: Path, cli: Any) -> None:
    body = "generators:\n  - {type: statute_qa, laws: [劳动合同法], limit: 3, reverse: false}\n"
    path = _recipe(tmp_path, statute_kb, "http://127.0.0.1:9/v1", body)
    code, out, err = cli("synth", str(path), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "statute_qa: 3 items, 3 rows, 3 kept" in out and "report:" in out
    assert len(_rows(tmp_path / "out" / "data.jsonl")) == 3


# -- the checks, one at a time -------------------------------------------------------------
def _made(answer: str, question: str = "问题？", source: str | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"record": {"messages": messages, "meta": {"item": question}}, "source": source,
            "flags": {}}  # fmt: skip


def test_checks_remove_what_they_should_and_count_it(statute_kb: Any) -> None:
    from domainlm.synth.checks import apply_checks

    passage = "员工累计工作已满1年不满10年的，年休假5天；已满10年不满20年的，年休假10天。"
    quoted_587 = "《民法典》第五百八十七条规定：当事人可以约定一方向对方给付定金作为债权的担保。定金合同自实际交付定金时成立。"
    items = [
        _made("工作满1年不满10年的员工，年休假5天。", "年休假几天？", passage),  # kept
        _made("工作满1年不满10年的员工，年休假5天。", "年休假几天？", passage),  # duplicate
        _made("公司会根据绩效另外奖励旅游名额。", "有奖励吗？", passage),  # not in the passage
        _made("好。"),  # too short
        _make_english := _made("The employee gets five days of annual leave every year."),
        _made("抱歉，作为一个AI，我无法回答这个问题。"),
        _made("依据《中华人民共和国民法典》第九千条，应当赔偿。", "能赔吗？"),
        _made(quoted_587, "定金怎么规定？"),
        _made("说说何可能说？" * 20, "怎么说？"),  # a degenerate loop
        _made("好的。请写出你作为咨询者的下一句话，我来回答借款的事。", "借款？"),  # the prompt
    ]
    kept, tally, rejected = apply_checks(items, Checks(citations="repair"), statute_kb)
    assert dict(tally.removed) == {"dedup": 1, "grounding": 1, "length": 1, "language": 1,
                                   "refusal": 1, "citations": 1, "repetition": 1,
                                   "prompt_echo": 1}  # fmt: skip
    assert _make_english["record"] in [{k: v for k, v in r.items() if k != "rejected"}
                                       for r in rejected]  # fmt: skip
    assert len(kept) == 2 and tally.repaired == 1
    repaired = kept[1]["record"]["messages"][-1]["content"]
    assert repaired.startswith("《民法典》第五百八十六条规定")
    original = items[7]["record"]["messages"][-1]["content"]
    assert original.startswith("《民法典》第五百八十七条")  # the row itself is left as it was
    dropped, tally, _ = apply_checks([_made(quoted_587, "定金？")], Checks(), statute_kb)
    assert not dropped and tally.removed["citations"] == 1
    kept, _, _ = apply_checks([_made(quoted_587, "定金？")], Checks(citations="keep"), statute_kb)
    assert len(kept) == 1


def test_near_duplicates_are_found_by_minhash() -> None:
    from domainlm.synth.checks import deduplicated

    base = "借款人应当按照约定的期限返还借款。对借款期限没有约定或者约定不明确的，可以协议补充。"
    items = [_made(base, "借款期限？"), _made(base + "谢谢。", "借款期限？"),
             _made("出卖人应当按照约定的时间交付标的物。", "交付时间？")]  # fmt: skip
    dropped: list[str] = []
    kept = deduplicated(items, 0.8, lambda item, why: dropped.append(why))
    assert [k["record"]["messages"][0]["content"] for k in kept] == ["借款期限？", "交付时间？"]
    assert dropped and "near-duplicate" in dropped[0]
    assert len(deduplicated(items, 1.0, lambda item, why: None)) == 3  # only exact copies


@pytest.mark.parametrize(
    ("stated", "answer", "problem"),
    [
        (11576.25, "本利和为11576.25元", None),
        (11576.3, "约11576.3元", None),  # rounded as written
        (11580, "约11580元", "stated 11580"),
        (11576.25, "本利和为12000元", "the answer states"),
        (11576.25, "本利和很多", "states no number"),
    ],
)
def test_tool_traces_hold_only_when_the_numbers_are_the_tools(
    stated: float, answer: str, problem: str | None
) -> None:
    from domainlm.synth.tooluse import check_trace

    plan = {"steps": [{"tool": "calculator", "result": stated}], "answer": answer}
    reason = check_trace(plan, [11576.250000000002], 1e-6)
    assert (reason is None) if problem is None else (problem in (reason or ""))


def test_every_shipped_synth_recipe_loads() -> None:
    shipped = sorted((ROOT / "recipes" / "synth").glob("*.yaml"))
    assert shipped
    for path in shipped:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(f"# domainlm synth recipes/synth/{path.name}")
        recipe = load_synth_recipe(path)
        assert recipe.generators and recipe.teacher is not None
        for spec in recipe.generators:
            documents = getattr(spec, "documents", None)
            if documents:
                assert recipe.path(documents).is_dir()
