"""expert=auto: questions go to the expert whose card covers them, everything else to the base.

The cards and questions below are written for this test (not taken from any dev set): a
law and a finance expert with cards as `domainlm train` writes them (description, system
prompt, sample prompts), questions in each domain, greetings and chit-chat, and questions
about other things, some sharing a word with a card by chance (公司, 员工, 借).
"""

from __future__ import annotations

import pytest

from domainlm.engine.adapters import BASE
from domainlm.engine.router import MIN_SIMILARITY, Router
from domainlm.expert import BaseRef, ExpertCard

_BASE = BaseRef(model="default", content_hash="sha256:0", chat_format="hf")
CARDS = {
    "law": ExpertCard(
        name="law",
        base=_BASE,
        stage="sft",
        description="中国法律咨询（Chinese law Q&A）：合同、定金、借款、侵权、劳动争议、婚姻家庭、继承",
        system_prompt="你是一名专业的中国法律助手，回答时引用相关法条。",
        samples=[
            {"prompt": "借条丢了还能要回钱吗？"},
            {"prompt": "公司不签劳动合同，员工可以要求双倍工资吗？"},
        ],
    ),
    "fin": ExpertCard(
        name="fin",
        base=_BASE,
        stage="sft",
        description="金融计算与咨询（financial computation）：利率、复利、贷款、收益率、股票、债券、基金",
        system_prompt="你是一名专业的金融分析助手，需要计算时调用计算器。",
        samples=[
            {"prompt": "本金10万元，年利率3%，复利5年后本息合计多少？"},
            {"prompt": "市盈率是什么意思？怎么计算？"},
        ],
    ),
}
LAW = [
    "定金和订金有什么区别？",
    "朋友借钱不还，我该怎么办？",
    "公司拖欠工资，劳动者怎么维权？",
    "离婚时夫妻共同财产怎么分割？",
    "父母去世没有遗嘱，遗产怎么继承？",
    "租房合同到期房东不退押金怎么办？",
    "被狗咬伤了，狗主人要承担侵权责任吗？",
    "签了合同对方违约，能要求赔偿吗？",
    "What does contract law say about a deposit?",
]
FINANCE = [
    "复利怎么计算？",
    "年化收益率8%的理财，5万元一年能赚多少？",
    "股票的市盈率高说明什么？",
    "房贷等额本息和等额本金哪个划算？",
    "债券价格和利率是什么关系？",
    "基金定投的收益率怎么算？",
    "贷款30万，年利率4.9%，20年月供多少？",
    "How is compound interest computed?",
]
ELSEWHERE = [
    *["你好", "您好，在吗？", "你是谁？", "你能做什么？", "谢谢你的帮助", "讲个笑话吧"],
    *["hello", "hi, who are you?", "What is the capital of France?", "我今天心情不好"],
    *["今天天气怎么样？", "帮我写一首关于春天的诗", "推荐一部好看的电影", "番茄炒蛋怎么做？"],
    *["Python 怎么读取文件？", "北京有哪些好玩的地方？", "晚上睡不着怎么办？", "如何学好英语？"],
    *["怎么写一份工作总结？", "周末去哪里玩比较好？"],
    # A word of a card, by chance:
    *["公司年会怎么策划？", "员工生日会准备什么礼物？", "我想要回借给同学的书"],
]


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(CARDS)


@pytest.mark.parametrize("question", ELSEWHERE)
def test_greetings_and_other_topics_go_to_the_base(router: Router, question: str) -> None:
    route = router.route(question)
    assert route.expert == BASE, (question, route)


def test_domain_questions_go_to_their_expert_never_the_other(router: Router) -> None:
    for expert, questions in (("law", LAW), ("fin", FINANCE)):
        routes = {q: router.route(q) for q in questions}
        assert {r.expert for r in routes.values()} <= {expert, BASE}, routes
        # A question sharing no word with the card (借钱 vs 借款, 离婚) cannot be told from
        # chit-chat by the card alone: it goes to the base. Most do share one.
        routed = sum(r.expert == expert for r in routes.values())
        assert routed >= len(questions) * 2 // 3, routes


def test_the_threshold_separates_the_examples(router: Router) -> None:
    """Where MIN_SIMILARITY came from: between the best chance match and the weakest
    domain match above (both with a margin)."""
    chance = max(max(router.scores(q).values()) for q in ELSEWHERE)
    domain = sorted(max(router.scores(q).values()) for q in LAW + FINANCE)
    matched = [s for s in domain if s >= MIN_SIMILARITY]
    assert chance < MIN_SIMILARITY * 0.8 and min(matched) > MIN_SIMILARITY * 1.2
