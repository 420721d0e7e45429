"""Retrieval on the real statute database: the ranking's fields and weights, hard queries,
qrels from cited answers, and a language model's rewriting and re-ranking."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from domainlm.errors import DomainLMError
from domainlm.kb.assisted import ModelReranker, ModelRewriter, clean_rewrite
from domainlm.kb.base import MAX_QUERY_CHARS, KnowledgeBase
from domainlm.kb.index import Bm25Index
from domainlm.kb.ranking import Ranking
from domainlm.kb.text import Tokenizer, char_bigrams

CIVIL = "中华人民共和国民法典"
LOANS = range(667, 681)  # 民法典 借款合同


def _top(kb: KnowledgeBase, query: str, ranking: Ranking | None = None) -> tuple[str, int]:
    hit = kb.search(query, k=1, ranking=ranking)[0]
    return hit.law or "", hit.article_num or 0


def test_everyday_questions_rank_the_article_that_settles_them(statute_kb: KnowledgeBase) -> None:
    law, number = _top(statute_kb, "什么是定金？定金最多可以约定多少？")
    assert law == CIVIL and number in (586, 587, 588)
    law, number = _top(statute_kb, "朋友借钱不还，我该怎么办？")
    assert law == CIVIL and number in LOANS
    assert _top(statute_kb, "楼上住户高空抛物砸伤了人，谁来承担责任？") == (CIVIL, 1254)
    # The ranking before the character field, specificity and the synonym terms at full
    # weight: idf ranks the adoption article that names 朋友 (a word four articles use)
    # above every loan article, and 高空作业's article above 高空抛物's.
    before = Ranking(chars=0, parts=1, specific=0, expansion=0.5)
    assert _top(statute_kb, "朋友借钱不还，我该怎么办？", before) == (CIVIL, 1107)
    assert _top(statute_kb, "楼上住户高空抛物砸伤了人，谁来承担责任？", before) != (CIVIL, 1254)


def test_specificity_weighs_everyday_words_down_and_terms_of_art_not() -> None:
    general = {"朋友": 0.5, "借款": 1e-5}  # shares of general text
    docs = [["借款", "返还"]] * 50 + [["朋友", "抚养"]]
    share = lambda term: general.get(term, 1e-9)  # noqa: E731
    index = Bm25Index.build(range(51), docs, [True] * 51, share)
    weights = index.specific({"朋友": 1.0, "借款": 1.0, "未见": 1.0}, 1.0, share)
    assert weights["朋友"] < 0.1 < 0.9 < weights["借款"]
    assert index.specific({"朋友": 1.0}, 0.0, share) == {"朋友": 1.0}
    # Scores as shares of what the query could score: one matched term of two is below 1.
    terms = {"借款": 1.0, "抚养": 1.0}
    share = index.scores(terms).max() / index.ceiling(terms)
    assert 0 < share < 0.6


def test_words_parts_and_character_pairs() -> None:
    tokenizer = Tokenizer(["个人独资企业"])
    assert ("个人独资企业", ["个人", "独资", "企业"]) in tokenizer.words("个人独资企业的投资人")
    assert char_bigrams("未按照规定 ABC罚") == ["未按", "按照", "照规", "规定", "abc", "罚"]
    assert tokenizer.general_share("朋友") > tokenizer.general_share("个人独资企业")


@pytest.mark.parametrize(
    "query",
    [
        "的了吗呢？",  # function words only
        "？！。，、……",  # punctuation only
        "朋友借錢不還怎麼辦",  # traditional characters
        "民法典第５８６条",  # full-width digits
        "my landlord 不退押金 deposit",  # mixed Chinese and English
        "定" * MAX_QUERY_CHARS,
    ],
)
def test_hard_queries_give_results_or_nothing(statute_kb: KnowledgeBase, query: str) -> None:
    hits = statute_kb.search(query, k=5)
    assert len(hits) <= 5 and all(np.isfinite(h.score) or h.via == "cited" for h in hits)


def test_hard_queries_find_what_they_ask(statute_kb: KnowledgeBase) -> None:
    assert _top(statute_kb, "民法典第５８６条") == (CIVIL, 586)
    assert _top(statute_kb, "什麼是定金") == (CIVIL, 586)
    assert statute_kb.search("的了吗呢？", k=5) == []
    with pytest.raises(DomainLMError, match="at most 2000"):
        statute_kb.search("定" * 10_000)


def test_qrels_from_answers_keep_citations_that_check_out(
    statute_kb: KnowledgeBase, tmp_path: Path, cli: Any
) -> None:
    rows = [
        {"question": "定金能约定多少？",
         "answer": "不超过百分之二十。法律依据：《民法典》第五百八十六条当事人可以约定一方向对方给付"
                   "定金作为债权的担保。定金合同自实际交付定金时成立。"},
        {"question": "合同无效怎么办？", "answer": "依据《合同法》第五十二条。"},  # repealed
        {"question": "随便问问", "answer": "没有法律依据。"},
    ]  # fmt: skip
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "qrels.jsonl"
    code, stdout, err = cli("kb", "qrels", str(statute_kb.folder), str(path), "-o", str(out))
    assert code == 0, err
    assert "1 of 3 questions" in stdout and "repealed" in stdout
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == [{"id": f"{path}:1", "query": "定金能约定多少？",
                        "relevant": [{"law": CIVIL, "article_no": 586}]}]  # fmt: skip
    code, _, err = cli("kb", "eval", str(statute_kb.folder), str(out))
    assert code == 0, err
    # A file without the fields, and one whose answers cite nothing usable: exit 2.
    (tmp_path / "bad.jsonl").write_text('{"q": "x"}\n', encoding="utf-8")
    code, _, err = cli("kb", "qrels", str(statute_kb.folder), str(tmp_path / "bad.jsonl"),
                       "-o", str(tmp_path / "x.jsonl"))  # fmt: skip
    assert code == 2 and "needs a question" in err and not (tmp_path / "x.jsonl").exists()
    (tmp_path / "none.json").write_text(json.dumps(rows[2:], ensure_ascii=False), "utf-8")
    code, _, err = cli("kb", "qrels", str(statute_kb.folder), str(tmp_path / "none.json"),
                       "-o", str(tmp_path / "x.jsonl"))  # fmt: skip
    assert code == 2 and "nothing written" in err and not (tmp_path / "x.jsonl").exists()


class _Scripted:
    """Models that answer as told: a rewrite per question, yes/no log-probabilities."""

    def __init__(self, rewrites: dict[str, str], favoured: str = ""):
        self.rewrites, self.favoured = rewrites, favoured
        self.asked: list[Any] = []

    def generate(self, jobs: list[Any]) -> Iterator[tuple[int, Any]]:
        from domainlm.eval.models import Reply

        for index, job in enumerate(jobs):
            self.asked.append(job)
            text = self.rewrites.get(job.messages[-1]["content"])
            yield index, Reply(text) if text is not None else DomainLMError("down")

    def loglik(self, jobs: list[Any]) -> list[list[float]]:
        return [[0.0, -5.0] if self.favoured in job.context else [-5.0, 0.0] for job in jobs]


def test_a_models_rewrite_is_searched_beside_the_question(statute_kb: KnowledgeBase) -> None:
    question = "这钱他一直拖着不给"  # nothing in it says loan
    models = _Scripted({question: "1. 借款合同\n2. 借款人 返还借款、逾期利息"})
    rewriter = ModelRewriter(models)
    assert rewriter.rewrite([question, "没脚本的问题"]) == ["借款合同 借款人 返还借款 逾期利息", ""]
    hit = statute_kb.search(question, k=1, rewriter=rewriter)[0]
    assert hit.law == CIVIL and hit.article_num in LOANS
    system = models.asked[0].messages[0]
    assert system["role"] == "system" and "法律" in system["content"]
    # A model that failed leaves the question searched as it is.
    assert statute_kb.search("定金", k=3, rewriter=ModelRewriter(_Scripted({}))) == (
        statute_kb.search("定金", k=3)
    )
    assert clean_rewrite("**借款**；返还\n" + "词 " * 200).startswith("借款 返还 词")
    assert len(clean_rewrite("词" * 500)) == 200


def test_a_models_reranking_reorders_the_candidates(statute_kb: KnowledgeBase) -> None:
    plain = statute_kb.search("定金", k=5)
    last = plain[-1].text[:20]
    reranked = statute_kb.search("定金", k=5, reranker=ModelReranker(_Scripted({}, last)))
    assert reranked[0].text[:20] == last and reranked[0].via == "rerank"
    assert {c.id for c in reranked} <= {c.id for c in statute_kb.search("定金", k=20)}


def test_rewrite_and_rerank_with_a_real_local_model(statute_kb: KnowledgeBase, cli: Any) -> None:
    """The tiny random model: the mechanics (generation, prompt log-probabilities, the CLI),
    not the quality."""
    folder = str(statute_kb.folder)
    code, out, err = cli("kb", "search", folder, "定金", "-k", "3", "--rewrite", "tiny",
                         "--rerank", "tiny", "--json")  # fmt: skip
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert len(hits) == 3 and all(h["via"] == "rerank" for h in hits)
    code, _, err = cli("kb", "eval", folder, "/nonexistent.jsonl", "--rerank", "tiny")
    assert code == 2 and "no such file" in err
